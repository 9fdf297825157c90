"""The savings-opportunity path of the streams worker on the real broker: gateway-shaped events
(client calls served by the expensive tier, budgeted shadow calls to the cheap tier graded by the
judge) → an informational notice that never pages, a retrain request with reason
``opportunity`` that covers the evidence, and its resolve once the task routes cheaply."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from services.contracts import AlertEvent, CallEvent, FeedbackEvent, RetrainRequest, prompt_hash
from services.contracts.topic_admin import apply_topics
from services.contracts.topics import ALERTS, CALLS, FEEDBACK, RETRAIN, topic_name
from streams.testing import WebhookReceiver, free_port, produce, read_topic, run_worker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
TASK = "world_religions"


def _client_call(prefix: str, model: str, accepted: bool) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    rid = uuid.uuid4().hex
    call = CallEvent(
        request_id=rid,
        task=TASK,
        prompt_hash=prompt_hash(rid),
        prompt=f"question {rid}",
        requested_model="switchyard/auto",
        mode="route",
        router_version="test-1",
        scores={CHEAP: 0.6, STRONG: 0.9},
        chosen_model=model,
        cost_usd=0.003 if model == STRONG else 0.00003,
        latency_ms=400,
    )
    fb = FeedbackEvent(request_id=rid, score=1.0 if accepted else 0.0, source="judge")
    return rid, [
        (topic_name(CALLS, prefix), rid.encode(), call.to_bytes()),
        (topic_name(FEEDBACK, prefix), rid.encode(), fb.to_bytes()),
    ]


def _shadow(prefix: str, of: str, accepted: bool) -> list[tuple[str, bytes, bytes]]:
    """What the gateway emits for one exploration: a call event (mode explore, ``shadow_of`` the
    client's call) and the judge's grade (source explore)."""
    sid = uuid.uuid4().hex
    call = CallEvent(
        request_id=sid,
        task=TASK,
        prompt_hash=prompt_hash(of),
        requested_model=CHEAP,
        mode="explore",
        router_version="test-1",
        chosen_model=CHEAP,
        cost_usd=0.00003,
        latency_ms=300,
        shadow_of=of,
    )
    fb = FeedbackEvent(request_id=sid, score=1.0 if accepted else 0.0, source="explore")
    return [
        (topic_name(CALLS, prefix), sid.encode(), call.to_bytes()),
        (topic_name(FEEDBACK, prefix), sid.encode(), fb.to_bytes()),
    ]


def _wait(pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if last := pred():
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_expensive_new_task_with_good_cheap_shadows_is_a_notice_not_a_page(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    asyncio.run(apply_topics(kafka_bootstrap, unique_prefix))
    receiver = WebhookReceiver()
    env = worker_env(
        kafka_bootstrap,
        unique_prefix,
        tmp_path / "state",
        free_port(),
        webhook_url=receiver.url,
        batch_within_s="0.1",
        window_s="86400",
        opportunity={"min_outcomes": 100, "min_cheap_labels": 30},
    )
    rng = np.random.default_rng(4)
    started = datetime.now(UTC)
    try:
        with run_worker(env, tmp_path / "worker.log", int(env["SWITCHYARD_STREAMS_WEB_PORT"])) as worker:
            # 1. the new task goes to GPT-4 (86 % right); its calls get a shadow call to the cheap
            #    model, right 9 times in 10 (the recorded accuracies of world_religions)
            records: list[tuple[str, bytes, bytes]] = []
            for i in range(140):
                rid, recs = _client_call(unique_prefix, STRONG, bool(rng.random() < 0.86))
                records += _shadow(unique_prefix, rid, i % 10 != 3) + recs
            asyncio.run(produce(kafka_bootstrap, records))

            alerts_topic = topic_name(ALERTS, unique_prefix)
            [first] = asyncio.run(read_topic(kafka_bootstrap, alerts_topic, 1, timeout_s=120))
            notice = AlertEvent.from_bytes(first.value)
            assert (notice.status.value, notice.task, notice.detector) == ("firing", TASK, "opportunity")
            assert notice.severity == "info" and "not a page" in notice.summary
            ev = notice.evidence
            assert ev["why"] == "cheap_good" and ev["expensive_share"] == 1.0
            # shadows are evidence, never traffic: the window counts only the client calls
            assert ev["shadow_labels"] == ev["cheap_labels"] >= 30 and 100 <= ev["outcomes"] <= 140

            [raw] = asyncio.run(read_topic(kafka_bootstrap, topic_name(RETRAIN, unique_prefix), 1))
            req = RetrainRequest.from_bytes(raw.value)
            assert req.reason == "opportunity" and req.tasks == [TASK] and req.alert_id == notice.alert_id
            # the retrain reads the detector's whole window: from the first outcome on
            assert req.window_start is not None and started <= req.window_start <= notice.ts
            assert (req.window_end - req.window_start).total_seconds() >= 0

            # 2. the new router sends the task to the cheap model and it holds: the notice resolves
            records = []
            for _ in range(200):
                records += _client_call(unique_prefix, CHEAP, bool(rng.random() < 0.9))[1]
            asyncio.run(produce(kafka_bootstrap, records))
            both = asyncio.run(read_topic(kafka_bootstrap, alerts_topic, 2, timeout_s=120, settle_s=2.0))
            statuses = [(a.status.value, a.detector) for a in (AlertEvent.from_bytes(r.value) for r in both)]
            assert statuses == [("firing", "opportunity"), ("resolved", "opportunity")]

            metrics = worker.metrics()
            assert 'switchyard_streams_alerts_total{detector="opportunity",status="firing"} 1.0' in metrics
            assert 'detector="quality"' not in metrics  # no drift alert: quality held
            _wait(lambda: worker.stats()["firing"] == [], 30, "nothing firing")
        # never paged: the on-call webhook got nothing, though it was configured and reachable
        assert receiver.bodies == []
    finally:
        receiver.close()

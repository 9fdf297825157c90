"""The streams worker on the real broker: a ``switchyard stream worker`` subprocess, real topics,
a real local HTTP receiver for the on-call webhook."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.contracts import (
    AlertEvent,
    CallEvent,
    DeadLetter,
    FeedbackEvent,
    HardQueryEvent,
    OutcomeEvent,
    RetrainRequest,
    prompt_hash,
)
from services.contracts.topic_admin import apply_topics
from services.contracts.topics import (
    ALERTS,
    CALLS,
    DEADLETTER,
    FEEDBACK,
    HARD_QUERIES,
    OUTCOMES,
    RETRAIN,
    task_outcomes_topic,
    topic_name,
)
from streams.testing import WebhookReceiver, free_port, produce, read_topic, run_worker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
TASK = "gsm8k"


def _pair(prefix: str, accepted: bool, *, feedback_first: bool = False) -> list[tuple[str, bytes, bytes]]:
    rid = uuid.uuid4().hex
    call = CallEvent(
        request_id=rid,
        task=TASK,
        prompt_hash=prompt_hash(rid),
        prompt=f"question {rid}",
        requested_model="switchyard/auto",
        mode="route",
        router_version="test-1",
        scores={CHEAP: 0.9, STRONG: 0.97},
        chosen_model=CHEAP,
        cost_usd=0.0002,
        latency_ms=350,
    )
    fb = FeedbackEvent(request_id=rid, score=1.0 if accepted else 0.0, source="judge")
    c = (topic_name(CALLS, prefix), rid.encode(), call.to_bytes())
    f = (topic_name(FEEDBACK, prefix), rid.encode(), fb.to_bytes())
    return [f, c] if feedback_first else [c, f]


def _pattern(n: int, rate: float, seed: int) -> list[bool]:
    return list(np.random.default_rng(seed).random(n) < rate)


def _wait(pred, timeout_s: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _events(worker) -> int:
    task = worker.stats()["tasks"].get(TASK)
    return task["total"]["events"] if task else 0


@pytest.fixture
def stack(kafka_bootstrap: str, unique_prefix: str, tmp_path: Path):
    asyncio.run(apply_topics(kafka_bootstrap, unique_prefix))
    ref = tmp_path / "reference.json"
    ref.write_text(json.dumps({TASK: {CHEAP: 0.9}}))
    receiver = WebhookReceiver(fail_first=1)  # the first delivery is retried
    env = worker_env(
        kafka_bootstrap,
        unique_prefix,
        tmp_path / "state",
        free_port(),
        webhook_url=receiver.url,
        reference_path=str(ref),
        batch_within_s="0.1",
        window_s="86400",
    )
    yield kafka_bootstrap, unique_prefix, env, receiver, tmp_path
    receiver.close()


def test_join_drift_alert_webhook_resolve_and_dead_letters(stack) -> None:
    bootstrap, prefix, env, receiver, tmp_path = stack
    with run_worker(env, tmp_path / "worker.log", int(env["SWITCHYARD_STREAMS_WEB_PORT"])) as worker:
        # 1. stable traffic, some feedback before its call, one feedback duplicated
        stable = [
            r
            for i, a in enumerate(_pattern(300, 0.9, 1))
            for r in _pair(prefix, a, feedback_first=i % 5 == 0)
        ]
        stable.append(stable[1])  # duplicate feedback
        asyncio.run(produce(bootstrap, stable))
        _wait(lambda: _events(worker) >= 300, 90, "300 outcomes in the task table")
        outcomes = asyncio.run(read_topic(bootstrap, topic_name(OUTCOMES, prefix), 300, settle_s=1.0))
        parsed = [OutcomeEvent.from_bytes(r.value) for r in outcomes]
        assert len(parsed) == 300 and len({o.request_id for o in parsed}) == 300
        assert all(r.key == TASK.encode() for r in outcomes)
        stats = worker.stats()["tasks"][TASK]["total"]
        assert stats["acceptance_by_model"][CHEAP]["events"] == 300
        assert stats["acceptance"] == pytest.approx(np.mean(_pattern(300, 0.9, 1)))
        assert stats["cheap_tier_share"] == 1.0 and stats["calibration"]["predicted"] == pytest.approx(0.9)
        assert worker.stats()["firing"] == []
        # the worker runs on uvloop by default (SWITCHYARD_STREAMS_EVENT_LOOP=auto)
        assert httpx.get(worker.base_url + "/progress/", timeout=5).json()["event_loop"] == "uvloop"
        # hard queries: every rejected answer of the cheap tier (top-2 margin 0.07: no low-margin ones)
        rejected = 300 - int(np.sum(_pattern(300, 0.9, 1)))
        hard = asyncio.run(read_topic(bootstrap, topic_name(HARD_QUERIES, prefix), rejected, settle_s=1.0))
        mined = [HardQueryEvent.from_bytes(r.value) for r in hard]
        assert len(mined) == rejected and {h.reason.value for h in mined} == {"negative_feedback"}

        # 2. the cheap model degrades on the task: one firing alert, one webhook call, a retrain request
        asyncio.run(produce(bootstrap, [r for a in _pattern(250, 0.5, 2) for r in _pair(prefix, a)]))
        alerts_topic = topic_name(ALERTS, prefix)
        firing = asyncio.run(read_topic(bootstrap, alerts_topic, 1, timeout_s=90))
        alert = AlertEvent.from_bytes(firing[0].value)
        assert (alert.status.value, alert.task, alert.detector) == ("firing", TASK, "quality")
        assert alert.evidence["subject"] == CHEAP and alert.suggested_action
        assert alert.report_url and alert.report_url.startswith("file://")
        report = Path(alert.report_url[len("file://") :])
        assert (
            report.is_file()
            and str(report).startswith(str(tmp_path))
            and "<html" in report.read_text()[:3000].lower()
        )
        _wait(lambda: receiver.bodies, 60, "the webhook call")
        [[posted]] = receiver.bodies
        assert posted["labels"]["task"] == TASK and posted["labels"]["fingerprint"] == alert.alert_id
        assert "endsAt" not in posted and posted["annotations"]["report_url"] == alert.report_url
        retrain = asyncio.run(read_topic(bootstrap, topic_name(RETRAIN, prefix), 1))
        req = RetrainRequest.from_bytes(retrain[0].value)
        assert req.tasks == [TASK] and req.alert_id == alert.alert_id and req.source == "streams"

        # 3. quality comes back: a resolve on the topic and on the webhook, still one firing in all
        asyncio.run(produce(bootstrap, [r for a in _pattern(400, 0.92, 3) for r in _pair(prefix, a)]))
        _wait(lambda: _events(worker) >= 950, 120, "all 950 outcomes")
        records = asyncio.run(read_topic(bootstrap, alerts_topic, 2, timeout_s=60, settle_s=2.0))
        statuses = [(a.status.value, a.alert_id) for a in (AlertEvent.from_bytes(r.value) for r in records)]
        assert statuses == [("firing", alert.alert_id), ("resolved", alert.alert_id)]
        _wait(lambda: len(receiver.bodies) >= 2, 60, "the resolve webhook call")
        assert len(receiver.bodies) == 2 and receiver.bodies[1][0]["endsAt"]
        assert worker.stats()["firing"] == []

        # 4. poison: not JSON, an unknown schema version, a contract violation -> dead letters, worker goes on
        bad_version = json.dumps({"schema_version": 2, "request_id": "x", "score": 1.0}).encode()
        no_score = json.dumps({"schema_version": 1, "request_id": "y"}).encode()
        # and on the monitor's input (the join's per-task batches): a batch with one broken item
        # keeps its valid outcome; a record that is not a batch at all
        task_outcomes = topic_name(task_outcomes_topic(env["SWITCHYARD_STREAMS_APP_ID"]), prefix)
        good = OutcomeEvent(
            request_id="z",
            task=TASK,
            prompt_hash="0" * 16,
            chosen_model=CHEAP,
            mode="route",
            score=1.0,
            accepted=True,
        ).to_bytes()
        asyncio.run(
            produce(
                bootstrap,
                [
                    (topic_name(CALLS, prefix), b"p1", b"\xff not json"),
                    (topic_name(FEEDBACK, prefix), b"x", bad_version),
                    (topic_name(FEEDBACK, prefix), b"y", no_score),
                    (task_outcomes, TASK.encode(), b"[" + good + b',{"schema_version":1,"task":"t"}]'),
                    (task_outcomes, TASK.encode(), b"not a batch"),
                    *_pair(prefix, True),
                ],
            )
        )
        dead = asyncio.run(
            read_topic(bootstrap, topic_name(DEADLETTER, prefix), 5, timeout_s=60, settle_s=1.0)
        )
        letters = [DeadLetter.from_bytes(r.value) for r in dead]
        assert sorted(d.key for d in letters if d.consumer == "join") == ["p1", "x", "y"]
        monitor_letters = [d for d in letters if d.consumer == "monitor"]
        assert sorted(d.value for d in monitor_letters) == sorted(
            ['{"schema_version":1,"task":"t"}', "not a batch"]
        )
        assert len(letters) == 5 and all(d.error for d in letters)
        _wait(lambda: _events(worker) >= 952, 60, "the records after the poison")
        metrics = worker.metrics()
        assert re.search(r'switchyard_streams_dead_letters_total\{topic="[^"]+calls\.v1"\} 1\.0', metrics)
        assert re.search(r'switchyard_streams_dead_letters_total\{topic="[^"]+feedback\.v1"\} 2\.0', metrics)
        assert re.search(r'switchyard_streams_dead_letters_total\{topic="[^"]+task-outcomes"\} 2\.0', metrics)
        assert re.search(r"switchyard_streams_webhook_deliveries_total 2\.0", metrics)
        assert 'switchyard_streams_alerts_total{detector="quality",status="firing"} 1.0' in metrics
        assert (
            "switchyard_streams_consumer_lag{" in metrics
            and "switchyard_streams_events_per_second" in metrics
        )
    # every topic the agents consume was in the broker's metadata when the worker subscribed
    # (an internal topic Faust creates at subscription time can miss it and get no partitions)
    log_text = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Ignoring missing topic" not in log_text and "not found in cluster metadata" not in log_text


def test_tables_are_recovered_after_a_restart(stack) -> None:
    bootstrap, prefix, env, receiver, tmp_path = stack
    port = int(env["SWITCHYARD_STREAMS_WEB_PORT"])
    with run_worker(env, tmp_path / "worker.log", port) as worker:
        asyncio.run(produce(bootstrap, [r for a in _pattern(200, 0.9, 4) for r in _pair(prefix, a)]))
        _wait(lambda: _events(worker) >= 200, 90, "200 outcomes")
        # a call whose feedback comes after the restart: the join table must remember it
        pending = _pair(prefix, True)
        asyncio.run(produce(bootstrap, [pending[0]]))
        time.sleep(2.0)
        before = worker.stats()["tasks"][TASK]
    with run_worker(env, tmp_path / "worker.log", port) as worker:
        after = worker.stats()["tasks"][TASK]
        assert after["total"] == before["total"]
        assert after["window"] == before["window"]  # a one-day window: the same window after the restart
        asyncio.run(produce(bootstrap, [pending[1]]))
        _wait(lambda: _events(worker) >= 201, 60, "the late feedback joined after the restart")
        outcomes = asyncio.run(read_topic(bootstrap, topic_name(OUTCOMES, prefix), 201, settle_s=1.0))
        assert len(outcomes) == 201

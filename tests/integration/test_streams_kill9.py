"""Exactly-once per-task counts across ``kill -9`` of the streams worker (real Kafka, real worker
subprocess): calls and feedback are published while the worker runs, the worker is killed with
SIGKILL at seeded random points of the stream (three times) and restarted; at the end every task's all-time
total, the events its quality detectors were fed and ``/progress/`` equal the distinct outcomes,
and ``switchyard.outcomes.v1`` holds each outcome exactly once."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from services.contracts import CallEvent, FeedbackEvent, OutcomeEvent, prompt_hash
from services.contracts.topic_admin import apply_topics
from services.contracts.topics import CALLS, FEEDBACK, OUTCOMES, topic_name
from streams.testing import Worker, free_port, produce, read_topic, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
TASKS = ("gsm8k", "mmlu", "hellaswag")
PER_TASK = 1200  # requests per task (each: one call, one feedback)
KILLS = 3
SEED = 15


def _records(prefix: str, rng: random.Random) -> list[tuple[str, bytes, bytes]]:
    out: list[tuple[str, bytes, bytes]] = []
    for i in range(PER_TASK * len(TASKS)):
        task = TASKS[i % len(TASKS)]
        rid = uuid.UUID(int=rng.getrandbits(128)).hex
        model = CHEAP if rng.random() < 0.7 else STRONG
        call = CallEvent(
            request_id=rid,
            task=task,
            prompt_hash=prompt_hash(rid),
            prompt=f"question {rid}",
            requested_model="switchyard/auto",
            mode="route",
            router_version="test-1",
            scores={CHEAP: 0.8, STRONG: 0.95},
            chosen_model=model,
            cost_usd=0.0002,
            latency_ms=350,
        )
        fb = FeedbackEvent(request_id=rid, score=1.0 if rng.random() < 0.85 else 0.0, source="judge")
        c = (topic_name(CALLS, prefix), rid.encode(), call.to_bytes())
        f = (topic_name(FEEDBACK, prefix), rid.encode(), fb.to_bytes())
        out.extend([f, c] if i % 7 == 0 else [c, f])  # some feedback before its call
    return out


def _kill9(worker: Worker) -> None:
    proc = worker.proc
    assert proc is not None and proc.poll() is None
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert b"stream" in cmdline and b"worker" in cmdline  # our own subprocess, nothing else
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _progress(worker: Worker) -> int:
    try:
        return httpx.get(worker.base_url + "/progress/", timeout=2).json()["events"]
    except httpx.HTTPError:
        return -1


def test_counts_exactly_once_across_kill9(kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    t_start = time.monotonic()
    bootstrap, prefix = kafka_bootstrap, unique_prefix
    asyncio.run(apply_topics(bootstrap, prefix))
    rng = random.Random(SEED)
    records = _records(prefix, rng)
    expected: collections.Counter[str] = collections.Counter()
    for topic, _, value in records:
        if topic == topic_name(CALLS, prefix):
            expected[json.loads(value)["task"]] += 1
    total = sum(expected.values())
    port = free_port()
    env = worker_env(
        bootstrap, prefix, tmp_path / "state", port, batch_within_s="0.1", window_s="86400", batch_size="100"
    )
    worker = Worker(env, tmp_path / "worker.log", port)
    # Published in waves while the worker runs: a kill lands mid-stream, not on an idle worker.
    size = len(records) // (KILLS + 1)  # even: a request's call and feedback stay in one wave
    waves = [records[i * size : (i + 1) * size] for i in range(KILLS + 1)]
    kills: list[tuple[float, int]] = []
    try:
        for k in range(KILLS + 1):
            worker.start(ready_timeout_s=60)
            sender = threading.Thread(target=lambda w=waves[k]: asyncio.run(produce(bootstrap, w)))
            sender.start()
            if k == KILLS:
                sender.join(60)
                break
            # A seeded random point of the stream: once the counted outcomes pass a random share of
            # this wave's (or a random time, whichever first), plus a random 0-100 ms.
            done = _progress(worker)
            while done < 0:
                time.sleep(0.05)
                done = _progress(worker)
            target = done + int(rng.uniform(0.1, 0.9) * total / (KILLS + 1))
            until = time.monotonic() + rng.uniform(2.0, 6.0)
            while time.monotonic() < until and _progress(worker) < target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.1))
            kills.append((target, _progress(worker)))
            _kill9(worker)
            sender.join(60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _progress(worker) < total:
            time.sleep(0.5)
        time.sleep(3)  # anything counted twice would show up after the total is reached
        stats = worker.stats()
        events = _progress(worker)
    finally:
        worker.stop()

    raw = asyncio.run(read_topic(bootstrap, topic_name(OUTCOMES, prefix), total, timeout_s=30, settle_s=2.0))
    outcomes = [OutcomeEvent.from_bytes(r.value) for r in raw]
    ids = collections.Counter(o.request_id for o in outcomes)
    counted = {task: stats["tasks"][task]["total"]["events"] for task in expected}
    fed = {task: sum(stats["tasks"][task]["detector_events"].values()) for task in expected}
    report = {
        "kills (target, events counted then)": kills,
        "seconds": round(time.monotonic() - t_start),
        "totals": counted,
        "detectors fed": fed,
        "progress": events,
        "outcomes on the topic": len(outcomes),
        "duplicated ids": sum(1 for n in ids.values() if n > 1),
    }
    print(report)
    # every task: all-time total == distinct outcomes == events its quality detectors were fed
    assert counted == dict(expected), report
    assert fed == dict(expected), report
    assert events == total, report
    # switchyard.outcomes.v1: each outcome exactly once
    assert [rid for rid, n in ids.items() if n > 1] == [], report
    assert len(ids) == total, report
    assert collections.Counter(o.task for o in outcomes) == expected

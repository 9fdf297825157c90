"""The worker's speed settings: its event loop (``EVENT_LOOP``), the producer appends without
per-record futures (``Outbox``), Faust's per-record Monitor off (``FAUST_MONITOR``). The fast
record delivery and the outbox on uvloop are in ``test_streams_fastdrain.py``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from aiokafka.producer.message_accumulator import MessageAccumulator
from aiokafka.structs import TopicPartition
from faust.sensors import Monitor

from services.contracts.settings import KafkaSettings
from streams import eventloop
from streams.app import create_app
from streams.fastpaths.outbox import Outbox, append_to_batches
from streams.fastpaths.quiet_monitor import RecordQuietMonitor
from streams.settings import StreamsSettings
from streams.testing import FakeAiokafkaProducer, FakeCluster, batch_records

ROOT = Path(__file__).resolve().parents[2]


def test_the_loop_setting_resolves_to_uvloop_or_asyncio(monkeypatch) -> None:
    assert StreamsSettings().event_loop == "auto"
    assert eventloop.resolve("auto") == "uvloop"  # uvloop is a dependency: installed here
    assert eventloop.resolve("uvloop") == "uvloop"
    assert eventloop.resolve("asyncio") == "asyncio"
    with pytest.raises(ValueError, match="unknown event loop"):
        eventloop.resolve("tokio")
    monkeypatch.setattr(eventloop.importlib.util, "find_spec", lambda name: None)  # not installed
    assert eventloop.resolve("auto") == "asyncio"
    assert eventloop.resolve("asyncio") == "asyncio"
    with pytest.raises(RuntimeError, match="not installed"):
        eventloop.resolve("uvloop")


@pytest.mark.parametrize(
    ("env", "expected"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_the_loop_setting_is_honoured_by_new_loops_and_threads(env, expected) -> None:
    # A fresh interpreter, as the worker's: settings from the environment, install, then the kind
    # of the loop asyncio.run makes and of a loop made in another thread (Faust's consumer thread).
    code = """
import asyncio, json, threading
from streams import eventloop
from streams.settings import StreamsSettings
chosen = eventloop.install(StreamsSettings().event_loop)
async def kind():
    return eventloop.running()
main = asyncio.run(kind())
out = {}
def other():
    loop = asyncio.new_event_loop()
    out["thread"] = loop.run_until_complete(kind())
    loop.close()
t = threading.Thread(target=other); t.start(); t.join()
print(json.dumps([chosen, main, out["thread"]]))
"""
    env_vars = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_STREAMS_EVENT_LOOP"}
    if env is not None:
        env_vars["SWITCHYARD_STREAMS_EVENT_LOOP"] = env
    out = subprocess.run(
        [sys.executable, "-c", code], env=env_vars, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [expected] * 3


async def test_records_go_into_aiokafkas_batches_in_order_without_a_future_each() -> None:
    acc = MessageAccumulator(FakeCluster(), 1_048_576, 0, 30)
    tp, other = TopicPartition("out", 3), TopicPartition("out", 1)
    await acc.add_message(tp, b"k0", b"before", 30)  # what the producer already holds is kept
    recs = [(b"k%d" % i, b"v%d" % i) for i in range(1, 200)] + [(b"gone", None)]
    touched = await append_to_batches(acc, tp, recs, 30)
    assert len(touched) == 1 and list(acc._batches[tp]) == touched
    assert batch_records(touched[0]) == [(b"k0", b"before"), *recs]
    assert len(touched[0]._msg_futures) == 1  # only add_message's record has its own future
    assert await append_to_batches(acc, other, [(None, b"x")], 30) == list(acc._batches[other])
    # the batch future reports delivery of all its records
    touched[0].done(base_offset=10)
    assert touched[0].future.result().offset == 10


async def test_a_full_batch_is_handed_to_the_sender_and_the_rest_go_to_the_next() -> None:
    acc = MessageAccumulator(FakeCluster(), 300, 0, 30)
    tp = TopicPartition("out", 0)
    recs = [(b"key-%03d" % i, b"x" * 40) for i in range(30)]
    sent = []

    async def sender() -> None:  # what aiokafka's sender does: take the oldest batch, drain it
        while True:
            await acc._waiter_future
            acc._waiter_future = asyncio.get_running_loop().create_future()
            while len(acc._batches[tp]) > 1 or (acc._batches[tp] and acc._batches[tp][0]._builder._closed):
                b = acc._pop_batch(tp)
                b.drain_ready()
                sent.append(b)

    task = asyncio.ensure_future(sender())
    touched = await asyncio.wait_for(append_to_batches(acc, tp, recs, 30), 10)
    assert len(touched) > 2  # it took several batches
    task.cancel()
    sent.extend(acc._batches[tp])
    assert sum((batch_records(b) for b in sent), []) == recs  # all of them, in order, once


async def test_the_outbox_watches_each_batch_it_wrote_to() -> None:
    aio = FakeAiokafkaProducer()
    acc = aio._message_accumulator
    failed = []
    box = Outbox(lambda fut: failed.append(fut.exception()))
    for i in range(30):
        box.add("out", b"task-%d" % (i % 5), b"v%d" % i)
    assert await box.send(type("FP", (), {"_ensure_producer": staticmethod(lambda: aio)})()) == 30
    batches = [b for q in acc._batches.values() for b in q]
    assert sum(len(batch_records(b)) for b in batches) == 30
    err = RuntimeError("broker gone")
    for b in batches:
        b.failure(exception=err)
    await asyncio.sleep(0)
    assert failed == [err] * len(batches)  # each failed batch is reported (logged and counted)


def test_faust_per_record_monitor_is_off_unless_asked(tmp_path) -> None:
    from aiokafka.structs import TopicPartition as TP

    quiet = create_app(StreamsSettings(state_dir=tmp_path / "a", web_enabled=False), KafkaSettings())
    loud = create_app(
        StreamsSettings(state_dir=tmp_path / "b", web_enabled=False, faust_monitor=True), KafkaSettings()
    )
    assert type(quiet.monitor) is RecordQuietMonitor and type(loud.monitor) is Monitor
    tp = TP("calls", 0)
    message = SimpleNamespace(tp=tp, offset=0, value=b"x", key=None)
    for m in (quiet.monitor, loud.monitor):
        for offset in range(3):
            m.on_message_in(tp, offset, message)
    # the same records in: Faust's Monitor counts them, the quiet one keeps no per-record state
    assert loud.monitor.messages_received_total == 3 and loud.monitor.messages_received_by_topic["calls"] == 3
    assert quiet.monitor.messages_received_total == 0 and not quiet.monitor.messages_received_by_topic
    # what is not per record is Faust's own (commits, rebalances): inherited, not overridden
    assert RecordQuietMonitor.on_commit_completed is Monitor.on_commit_completed


@pytest.mark.parametrize("shift", [0.0, 0.25, 1.0])
def test_the_lean_input_check_decides_as_evidentlys_data_drift_preset(shift, tmp_path) -> None:
    from streams.detectors import InputDrift, drift_numbers, write_report
    from streams.drift import FEATURE_COLUMNS
    from streams.settings import InputDriftConfig

    rng = np.random.default_rng(int(shift * 100))
    det = InputDrift(InputDriftConfig(), FEATURE_COLUMNS)

    def rows(n: int, d: float) -> list[dict[str, float]]:
        return [
            {
                "chosen_score": float(rng.beta(5 - 3 * d, 2)),
                "top_score": float(rng.normal(0.7 - 0.2 * d, 0.1)),
                "margin": float(rng.exponential(0.1 + 0.1 * d)),
                "score_mean": float(rng.normal(0.5, 0.1)),
                "prompt_chars": float(rng.normal(400 + 300 * d, 80)),
                "prompt_tokens": float(rng.integers(1, 4)),  # few distinct values: another test
            }
            for _ in range(n)
        ]

    det.add(rows(300, 0.0) + rows(300, shift))
    lean = det.check()
    share, per_col = drift_numbers(lean.report())  # the full preset on the same windows
    assert lean.share == pytest.approx(share)
    assert lean.columns == pytest.approx(per_col)
    assert lean.drifted == (share >= 0.5)
    if shift == 1.0:
        assert lean.drifted
        assert write_report(lean.report(), tmp_path / "r.html").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("env", "frozen", "gen0"), [({}, True, 20_000), ({"GC_FREEZE": "false", "GC_GEN0": "0"}, False, 700)]
)
def test_the_gc_policy_freezes_the_start_up_heap_and_still_collects_cycles(env, frozen, gen0) -> None:
    # A fresh interpreter, as the worker's (the policy is process-wide).
    code = """
import gc, json, weakref
import pandas  # a large start-up heap, as the worker's evidently/pandas/Faust
from streams import gcpolicy
from streams.settings import StreamsSettings
s = StreamsSettings()
out = gcpolicy.apply(s.gc_freeze, s.gc_gen0)
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after start-up
gone = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps([out["frozen_objects"], gc.get_threshold()[0], gone() is None]))
"""
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_STREAMS_GC")}
    env_vars.update({f"SWITCHYARD_STREAMS_{k}": v for k, v in env.items()})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env_vars, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    n_frozen, threshold, collected = json.loads(out.stdout.strip().splitlines()[-1])
    assert (n_frozen > 10_000) is frozen and (n_frozen == 0) is not frozen
    assert threshold == gen0
    assert collected  # cycles made after the freeze are still collected

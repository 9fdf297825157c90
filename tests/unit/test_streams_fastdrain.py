"""The worker's fast paths: record delivery without per-record tasks
(``streams/fastpaths/fastdrain.py``), the join's direct changelog writes
(``BatchWrites.flush_direct``) and the outbox (``streams/fastpaths/outbox.py``), bulk and fallback;
on asyncio's loop and again on uvloop, the worker's default."""

from __future__ import annotations

import asyncio
import difflib
import inspect
import json
import textwrap
from types import SimpleNamespace

import pytest
from faust.serializers import codecs

from streams.batchwrites import BatchWrites
from streams.fastpaths import fastdrain
from streams.fastpaths.outbox import Outbox
from streams.testing import FakeAiokafkaProducer, FakeConsumer, FakeFaustProducer


async def test_a_delivery_that_does_not_block_runs_inline_without_tasks() -> None:
    consumer, got = FakeConsumer(), []

    async def callback(message):
        got.append(message)

    tasks_before = len(asyncio.all_tasks())
    for i in range(5):
        await fastdrain.deliver(consumer, callback, i)
    assert got == [0, 1, 2, 3, 4]
    assert consumer.wait_first_calls == 0 and len(asyncio.all_tasks()) == tasks_before


async def test_a_blocked_delivery_is_resumed_in_the_draining_task() -> None:
    consumer, got = FakeConsumer(), []
    loop = asyncio.get_running_loop()
    rooms = [loop.create_future(), loop.create_future()]

    async def callback(message):
        got.append(("start", message))
        got.append(("room", await rooms[message]))  # a full stream buffer
        await asyncio.sleep(0)
        got.append(("put", message))

    task = asyncio.ensure_future(fastdrain.deliver(consumer, callback, 0))
    await asyncio.sleep(0.01)
    assert got == [("start", 0)] and not task.done()
    tasks_blocked = len(asyncio.all_tasks())
    rooms[0].set_result(7)
    await asyncio.wait_for(task, 1)
    assert got == [("start", 0), ("room", 7), ("put", 0)]
    # a second blocked delivery reuses the one watcher: no task per record
    task = asyncio.ensure_future(fastdrain.deliver(consumer, callback, 1))
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) == tasks_blocked and consumer.wait_first_calls == 1
    rooms[1].set_result(8)
    await asyncio.wait_for(task, 1)
    assert got[-2:] == [("room", 8), ("put", 1)]


async def test_a_rebalance_interrupts_a_blocked_delivery() -> None:
    consumer, cancelled = FakeConsumer(), []

    async def callback(message):
        try:
            await asyncio.get_running_loop().create_future()  # never gets room
        except asyncio.CancelledError:
            cancelled.append(message)
            raise

    task = asyncio.ensure_future(fastdrain.deliver(consumer, callback, "m"))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()  # stop_flow() on rebalance
    await asyncio.wait_for(task, 1)
    await asyncio.sleep(0)
    assert cancelled == ["m"]  # the blocked delivery was given up, as upstream does


async def test_errors_propagate_before_and_after_blocking() -> None:
    consumer = FakeConsumer()

    async def at_once(message):
        raise ValueError("bad record")

    async def later(message):
        await asyncio.sleep(0.001)
        raise KeyError("late")

    with pytest.raises(ValueError, match="bad record"):
        await fastdrain.deliver(consumer, at_once, 1)
    with pytest.raises(KeyError, match="late"):
        await fastdrain.deliver(consumer, later, 1)


async def test_while_the_flow_is_suspended_delivery_is_faust_own() -> None:
    consumer, got = FakeConsumer(), []
    consumer.suspend_flow.set()

    async def callback(message):
        got.append(message)

    await fastdrain.deliver(consumer, callback, "x")
    assert consumer.wait_first_calls == 1


def test_the_installed_faust_loop_is_patched_at_its_one_delivery_call() -> None:
    from faust.transport import consumer as fc

    assert fastdrain.install()
    patched = fc.Consumer._drain_messages
    original = patched.__wrapped__
    source = textwrap.dedent(inspect.getsource(original))
    new = fastdrain.patched_source(source)
    assert new is not None and new.count("_switchyard_deliver(self, callback, message)") == 1
    # a line diff against upstream: the one per-record delivery call is all that changes
    diff = [d for d in difflib.ndiff(source.splitlines(), new.splitlines()) if d[:2] in ("- ", "+ ")]
    removed = [d[2:] for d in diff if d.startswith("- ")]
    added = [d[2:] for d in diff if d.startswith("+ ")]
    call = "await _switchyard_deliver(self, callback, message)"
    assert [a.strip() for a in added] == [call]
    upstream_call = " ".join(r.strip() for r in removed).replace("( ", "(").replace(" )", ")")
    assert upstream_call == "await self.wait_first(callback(message), self.suspend_flow.wait())"
    indent = len(removed[0]) - len(removed[0].lstrip())
    assert added[0] == " " * indent + call  # in the same block as the call it replaces
    assert patched.__code__.co_filename.startswith("<switchyard fastdrain")
    # the installed method is that source: it calls deliver, upstream's does not
    assert "_switchyard_deliver" in patched.__code__.co_names
    assert "_switchyard_deliver" not in original.__code__.co_names
    assert fastdrain.patched_source("async def f(self):\n    await callback(message)\n") is None


class FakeTable:
    def __init__(self) -> None:
        self.data: dict = {"old": {"call": {"x": 1}}}
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: "app-join-changelog")


def _event(partition: int):
    return SimpleNamespace(message=SimpleNamespace(partition=partition))


def test_direct_changelog_writes_one_faust_readable_record_per_key_per_batch() -> None:
    table, sent = FakeTable(), []

    def emit(topic, key, value, partition):
        sent.append((topic, key, value, partition))

    writes = BatchWrites(table)
    writes.event = _event(2)
    writes["r1"] = {"call": {"task": "gsm8k", "latency_ms": 1.5}, "ts": 1.0, "p": 2}
    writes.event = _event(4)
    writes["r1"] = {"done": True, "ts": 2.0, "p": 4, "fid": None}  # its feedback, same batch
    assert writes.get("r1")["done"] and "r1" not in table.data  # read-your-writes before the flush
    writes.event = _event(1)
    del writes["old"]
    assert writes.flush_direct(emit) == 2
    assert table.data == {"r1": {"done": True, "ts": 2.0, "p": 4, "fid": None}}
    by_key = {codecs.loads("json", k): (t, v, p) for t, k, v, p in sent}
    topic, raw, partition = by_key["r1"]
    assert topic == "app-join-changelog" and partition == 4
    assert codecs.loads("json", raw) == table.data["r1"]  # what Faust's recovery decodes
    assert by_key["old"] == ("app-join-changelog", None, 1)  # a tombstone
    assert json.loads(sent[0][1]) in {"r1", "old"}
    assert writes.flush_direct(emit) == 0 and len(sent) == 2


def _fill(box: Outbox) -> list[bytes]:
    keys = [f"task-{i % 7}".encode() for i in range(20)]
    for i, k in enumerate(keys):
        box.add("out", k, b"v%d" % i)
    box.add("log", b"k", None, 2)  # an explicit partition, a tombstone
    return keys


async def test_the_outbox_appends_each_record_where_send_would_put_it() -> None:
    """The default bulk path: records go straight into aiokafka's batches, no send per record."""
    from aiokafka.partitioner import DefaultPartitioner

    aio = FakeAiokafkaProducer()
    faust_producer = FakeFaustProducer(aio)
    done = []
    box = Outbox(done.append)
    assert box.bulk
    keys = _fill(box)
    assert len(box) == 21
    assert await box.send(faust_producer) == 21 and len(box) == 0
    assert faust_producer.sent == [] and box.bulk  # nothing went through the per-record send
    part = DefaultPartitioner()
    every = [0, 1, 2, 3, 4, 5]
    expected = [("out", part(k, every, every), k, b"v%d" % i) for i, k in enumerate(keys)]
    appended = aio.appended()
    assert sorted(r for r in appended if r[0] == "out") == sorted(expected)
    assert ("log", 2, b"k", None) in appended
    # order within a partition is kept
    for p in every:
        got = [int(v[1:]) for t, q, _, v in appended if t == "out" and q == p]
        assert got == sorted(got)
    batches = aio.batches()
    assert len(batches) == len({(t, p) for t, p, _, _ in appended})  # one batch per partition
    assert all(not b._msg_futures for b in batches)  # no delivery future per record
    for b in batches:
        b.done(base_offset=0)
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert len(done) == len(batches)  # each batch's future is watched
    assert await box.send(faust_producer) == 0
    box.add("log", b"k", b"v", 7)
    with pytest.raises(ValueError, match="no partition 7"):
        await box.send(faust_producer)


async def test_the_outbox_falls_back_to_faust_send_one_record_at_a_time(caplog) -> None:
    """The fallback: Faust's public ``producer.send`` per record, in order, partitions kept."""
    for box, aio in (
        (Outbox(None, bulk=False), FakeAiokafkaProducer()),  # the start-up check said no
        (Outbox(None), SimpleNamespace(_txn_manager=None)),  # a producer without the internals
    ):
        done = []
        box.on_sent = done.append
        faust_producer = FakeFaustProducer(aio)
        keys = _fill(box)
        with caplog.at_level("WARNING", logger="streams.fastpaths.outbox"):
            assert await box.send(faust_producer) == 21
        expected = [("out", None, k, b"v%d" % i) for i, k in enumerate(keys)] + [("log", 2, b"k", None)]
        assert faust_producer.sent == expected  # the producer's partitioner picks, as Topic.send
        assert not box.bulk
        await asyncio.sleep(0)
        assert len(done) == 2  # the last record's future of each (topic, partition) group
        if isinstance(aio, FakeAiokafkaProducer):
            assert aio.batches() == []  # nothing appended behind Faust's back
    assert "fast path outbox off" in caplog.text and "MessageAccumulator._batches" in caplog.text


FAST_PATH_CASES = [
    test_a_delivery_that_does_not_block_runs_inline_without_tasks,
    test_a_blocked_delivery_is_resumed_in_the_draining_task,
    test_a_rebalance_interrupts_a_blocked_delivery,
    test_errors_propagate_before_and_after_blocking,
    test_while_the_flow_is_suspended_delivery_is_faust_own,
    test_the_outbox_appends_each_record_where_send_would_put_it,
]


@pytest.mark.parametrize("case", FAST_PATH_CASES, ids=lambda f: f.__name__)
def test_the_fast_paths_behave_the_same_on_uvloop(case) -> None:
    import uvloop

    from streams import eventloop

    seen = []

    async def run() -> None:
        seen.append(eventloop.running())
        await case()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
    assert seen == ["uvloop"]

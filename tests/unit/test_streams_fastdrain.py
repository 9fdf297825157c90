"""The worker's fast paths: record delivery without per-record tasks (``streams/fastdrain.py``)
and the join's direct changelog writes (``BatchWrites.flush_direct``)."""

from __future__ import annotations

import asyncio
import inspect
import json
import textwrap
from types import SimpleNamespace

import pytest
from faust.serializers import codecs

from streams import fastdrain
from streams.app import BatchWrites, Outbox


class FakeConsumer:
    """The two things ``deliver`` uses of Faust's consumer; ``wait_first`` as mode's does it
    (first completed wins, the rest are cancelled, exceptions propagate)."""

    def __init__(self) -> None:
        self.suspend_flow = asyncio.Event()
        self.wait_first_calls = 0

    async def wait_first(self, *aws):
        self.wait_first_calls += 1
        futs = [asyncio.ensure_future(a) for a in aws]
        try:
            done, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
            for f in done:
                if f.exception() is not None:
                    f.result()
            return [f.result() for f in futs if f.done()]
        finally:
            for f in futs:
                if not f.done():
                    f.cancel()


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
    # only that call differs from upstream
    assert new.replace("await _switchyard_deliver(self, callback, message)", "X") == fastdrain._CALL.sub(
        "X", source
    )
    assert patched.__code__.co_filename.startswith("<switchyard fastdrain")
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


class FakeAiokafkaProducer:
    """What ``Outbox`` uses of aiokafka's producer, with aiokafka's own default partitioner."""

    def __init__(self) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self._partitioner = DefaultPartitioner()
        self._txn_manager = None
        self._request_timeout_ms = 40000
        self.sent: list = []
        parts = {"out": {0, 1, 2, 3, 4, 5}, "log": {0, 1, 2}}
        self.client = SimpleNamespace(
            _wait_on_metadata=self._meta,
            cluster=SimpleNamespace(partitions_for_topic=parts.get, available_partitions_for_topic=parts.get),
        )
        self._message_accumulator = SimpleNamespace(add_message=self._add)

    async def _meta(self, topic):
        return None

    async def _add(self, tp, key, value, timeout):
        self.sent.append((tp.topic, tp.partition, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_the_outbox_appends_each_record_where_send_would_put_it() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    aio = FakeAiokafkaProducer()
    faust_producer = SimpleNamespace(_ensure_producer=lambda: aio)
    done = []
    box = Outbox(done.append)
    keys = [f"task-{i % 7}".encode() for i in range(20)]
    for i, k in enumerate(keys):
        box.add("out", k, b"v%d" % i)
    box.add("log", b"k", None, 2)  # an explicit partition, a tombstone
    assert len(box) == 21
    assert await box.send(faust_producer) == 21 and len(box) == 0
    part = DefaultPartitioner()
    every = [0, 1, 2, 3, 4, 5]
    expected = [("out", part(k, every, every), k, b"v%d" % i) for i, k in enumerate(keys)]
    assert sorted(r for r in aio.sent if r[0] == "out") == sorted(expected)
    assert ("log", 2, b"k", None) in aio.sent
    # order within a partition is kept
    for p in every:
        got = [int(v[1:]) for t, q, _, v in aio.sent if t == "out" and q == p]
        assert got == sorted(got)
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert len(done) == len({(t, p) for t, p, _, _ in aio.sent})  # one watched future per partition
    assert await box.send(faust_producer) == 0
    box.add("log", b"k", b"v", 7)
    with pytest.raises(ValueError, match="no partition 7"):
        await box.send(faust_producer)

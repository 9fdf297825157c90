"""The emitter never blocks the caller, spools while the broker is away and replays the spool in
order, exactly once, when it is back (broker simulated by an in-memory producer)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.contracts.events import CallEvent, RoutingMode
from services.contracts.topics import CALLS
from services.gateway.emitter import EmitterConfig, EventEmitter, Spool
from services.gateway.testing import Broker, FakeProducer


def event(i: int) -> CallEvent:
    return CallEvent(
        request_id=f"r{i:04d}",
        prompt_hash="h" * 64,
        requested_model="switchyard/auto",
        mode=RoutingMode.ROUTE,
    )


def emitter(tmp_path: Path, broker: Broker, **kw) -> EventEmitter:
    cfg = EmitterConfig(
        bootstrap="unused:1",
        spool_dir=tmp_path / "spool",
        retry_backoff_s=0.02,
        max_backoff_s=0.05,
        topic_prefix="p.",
        **kw,
    )
    return EventEmitter(cfg, lambda: FakeProducer(broker))


def keys(broker: Broker) -> list[str]:
    return [k.decode() for _, k, _ in broker.log]


async def test_sends_in_order_with_request_id_keys(tmp_path: Path) -> None:
    broker = Broker()
    em = emitter(tmp_path, broker)
    await em.start()
    for i in range(50):
        em.emit(CALLS, event(i), key=f"r{i:04d}")
    assert await em.flush(5)
    await em.stop()
    assert keys(broker) == [f"r{i:04d}" for i in range(50)]
    assert {t for t, _, _ in broker.log} == {"p.switchyard.calls.v1"}
    assert CallEvent.from_bytes(broker.log[0][2]).request_id == "r0000"


async def test_spools_while_down_and_replays_in_order_without_duplicates(tmp_path: Path) -> None:
    broker = Broker(up=True)
    em = emitter(tmp_path, broker)
    await em.start()
    for i in range(10):
        em.emit(CALLS, event(i), key=f"r{i:04d}")
    assert await em.flush(5)
    broker.up = False
    for i in range(10, 40):
        em.emit(CALLS, event(i), key=f"r{i:04d}")
    for _ in range(100):
        if em.spool.pending == 30:
            break
        await asyncio.sleep(0.02)
    assert em.spool.pending == 30 and em.spool.bytes > 0
    broker.up = True
    for i in range(40, 50):
        em.emit(CALLS, event(i), key=f"r{i:04d}")
    assert await em.flush(5)
    await em.stop()
    assert keys(broker) == [f"r{i:04d}" for i in range(50)]
    assert em.spool.pending == 0 and em.spool.bytes == 0


async def test_emit_never_waits_and_an_overflowing_group_is_written_at_once_in_order(tmp_path: Path) -> None:
    broker = Broker(up=False)
    em = emitter(tmp_path, broker, queue_size=5)  # not started: no committer drains the group
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(20):
        em.emit(CALLS, event(i), key=f"r{i:04d}")
    assert loop.time() - t0 < 0.5
    assert em.queue_depth + em.spool.pending == 20 and em.queue_depth <= 5
    broker.up = True
    await em.start()
    assert await em.flush(5)
    await em.stop()
    assert keys(broker) == [f"r{i:04d}" for i in range(20)]


async def test_every_emitted_event_is_on_disk_within_a_group_commit(tmp_path: Path) -> None:
    """What a kill -9 right after the responses would leave: the log on disk, nothing in memory."""
    broker = Broker(up=False)  # Kafka is down: only the local log holds the events
    em = emitter(tmp_path, broker)
    await em.start()
    for i in range(30):
        em.emit(CALLS, event(i), key=f"r{i:04d}")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while em.queue_depth and loop.time() - t0 < 1:
        await asyncio.sleep(0.001)
    assert em.queue_depth == 0 and loop.time() - t0 < 0.1  # the group commit: well under 100 ms
    crashed = Spool(tmp_path / "spool")  # a new process reads only what is on disk
    assert crashed.pending == 30
    crashed.seal()
    [segment] = crashed.segments()
    assert [r.key for r in crashed.unsent(segment)[1]] == [f"r{i:04d}" for i in range(30)]
    for task in em._tasks:  # the crash: no flush, no stop
        task.cancel()
    broker.up = True
    em2 = emitter(tmp_path, broker)
    await em2.start()
    assert await em2.flush(5)
    await em2.stop()
    assert keys(broker) == [f"r{i:04d}" for i in range(30)]


async def test_spool_survives_restart_and_resumes_after_checkpoint(tmp_path: Path) -> None:
    broker = Broker(up=False)
    em = emitter(tmp_path, broker)
    await em.start()
    for i in range(8):
        em.emit(CALLS, event(i), key=f"r{i:04d}")
    await asyncio.sleep(0.2)
    await em.stop(flush_timeout_s=0.2)
    assert Spool(tmp_path / "spool").pending == 8  # durable across a restart
    spool = Spool(tmp_path / "spool")
    spool.seal()
    seg = spool.segments()[0]
    pos, records = spool.unsent(seg)
    spool.advance(seg, pos, 3)  # pretend 3 were acknowledged before a crash
    broker.log.extend((r.topic, r.key.encode(), r.value.encode()) for r in records[:3])
    broker.up = True
    em2 = emitter(tmp_path, broker)
    assert em2.spool.pending == 5
    await em2.start()
    assert await em2.flush(5)
    await em2.stop()
    assert keys(broker) == [f"r{i:04d}" for i in range(8)]

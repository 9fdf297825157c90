"""The join's output records handed to Faust's producer in bulk (aiokafka internals).

``Topic.send`` costs, per record, Faust's channel, future-message and sensor machinery, and
aiokafka's ``send`` a metadata look-up and partition check (two set copies) and a delivery future
per record. The bulk path looks the metadata up once per topic and batch, puts a keyed record on
the partition the producer's own partitioner picks (as ``send`` would: the same partition), and
appends the records to the producer's pending batch of each partition (as ``send`` does last,
waiting only when that batch is full), without a future per record.

Private internals used (aiokafka 0.14, faust-streaming 0.15, see :mod:`.support`): Faust's
``Producer._ensure_producer``; aiokafka's ``AIOKafkaProducer._partitioner``,
``._message_accumulator``, ``._request_timeout_ms``, ``._txn_manager``,
``client._wait_on_metadata``; ``MessageAccumulator._batches``, ``._append_batch``,
``.create_builder``, ``._waiter_future``, ``._closed``, ``._exception``; ``MessageBatch._builder``.

Fallback (another version, or a producer without those attributes, or a transactional one):
every record goes through Faust's public ``producer.send`` in order, one by one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

from aiokafka.errors import KafkaTimeoutError, ProducerClosed
from aiokafka.structs import TopicPartition

from . import support

log = logging.getLogger(__name__)

Records = list[tuple[bytes | None, bytes | None]]

FALLBACK = "the join's records go through Faust's producer.send, one at a time"
_PRODUCER_ATTRS = ("_partitioner", "_message_accumulator", "_request_timeout_ms", "client")
_ACC_ATTRS = ("_batches", "_append_batch", "create_builder", "_waiter_future", "_closed", "_exception")


def supported() -> bool:
    """The start-up check: versions in range and the classes have what the bulk path calls."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.producer.message_accumulator import BatchBuilder, MessageAccumulator, MessageBatch
    from faust.transport.drivers.aiokafka import Producer

    return support.check(
        "outbox",
        FALLBACK,
        ("faust-streaming", "aiokafka"),
        [
            (Producer, "_ensure_producer"),
            (AIOKafkaClient, "_wait_on_metadata"),
            (MessageAccumulator, "_append_batch"),
            (MessageAccumulator, "create_builder"),
            (MessageBatch, "wait_drain"),
            (BatchBuilder, "append"),
        ],
    )


class Outbox:
    """Output records of one batch, handed to Faust's producer per topic partition.

    The producer is Faust's, so the offset commit still flushes these records first
    (at-least-once, as with ``Topic.send``). ``on_sent`` gets, per partition, the future of its
    last record (fallback) or of each producer batch written to (bulk), to log and count
    failures: a failed produce request fails all the records of its batch. ``bulk`` is the
    start-up check's verdict (:func:`supported`); the bulk path also checks the running producer
    and falls back, with a WARNING, when it lacks what the path uses."""

    def __init__(self, on_sent: Any = None, bulk: bool = True) -> None:
        self.on_sent = on_sent
        self.bulk = bulk
        self._groups: dict[tuple[str, int | None], Records] = {}

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        self._groups.setdefault((topic, partition), []).append((key, value))

    def __len__(self) -> int:
        return sum(len(v) for v in self._groups.values())

    async def send(self, faust_producer: Any, wait: bool = False) -> int:
        """Hand every record to the producer; return how many. With ``wait``, return only once
        the broker acknowledged all of them (the bulk path sends their batches at once, without
        waiting out the producer's linger) and raise the first delivery error: what the join
        needs before it writes the changelog records that say these outputs exist."""
        if not self._groups:
            return 0
        groups, self._groups = self._groups, {}
        futures: list[Any] | None = [] if wait else None
        producer = self._bulk_producer(faust_producer) if self.bulk else None
        if producer is None:
            n = await self._send_public(faust_producer, groups, futures)
        else:
            n = await self._send_bulk(producer, groups, futures)
            if futures:
                send_now(producer._message_accumulator, futures)
        if futures:
            await asyncio.gather(*futures)
        return n

    def _bulk_producer(self, faust_producer: Any) -> Any:
        """The aiokafka producer Faust runs, when the bulk path can use it (else None)."""
        producer = faust_producer._ensure_producer()
        txn = getattr(producer, "_txn_manager", None)
        if txn is not None and txn.transactional_id is not None:  # exactly-once: aiokafka's own path
            return None
        acc = getattr(producer, "_message_accumulator", None)
        missing = [a for a in _PRODUCER_ATTRS if not hasattr(producer, a)]
        missing += [f"MessageAccumulator.{a}" for a in _ACC_ATTRS if not hasattr(acc, a)]
        if missing:
            log.warning("fast path outbox off (the producer has no %s): %s", ", ".join(missing), FALLBACK)
            self.bulk = False
            return None
        return producer

    async def _send_public(
        self,
        faust_producer: Any,
        groups: dict[tuple[str, int | None], Records],
        futures: list[Any] | None = None,
    ) -> int:
        n = 0
        for (topic, partition), records in groups.items():
            fut = None
            for key, value in records:
                fut = await faust_producer.send(topic, key, value, partition, None, None)
                if futures is not None:
                    futures.append(fut)
            if fut is not None and self.on_sent is not None:
                fut.add_done_callback(self.on_sent)
            n += len(records)
        return n

    async def _send_bulk(
        self,
        producer: Any,
        groups: dict[tuple[str, int | None], Records],
        futures: list[Any] | None = None,
    ) -> int:
        by_tp: dict[TopicPartition, Records] = {}
        for (topic, partition), records in groups.items():
            await producer.client._wait_on_metadata(topic)
            meta = producer.client.cluster
            every = list(meta.partitions_for_topic(topic))
            if partition is not None:
                if partition not in every:
                    raise ValueError(f"{topic} has no partition {partition}")
                by_tp.setdefault(TopicPartition(topic, partition), []).extend(records)
                continue
            available = list(meta.available_partitions_for_topic(topic))
            tps: dict[int, TopicPartition] = {}
            chosen: dict[bytes, int] = {}  # keys repeat (task names): murmur2 in Python once per key
            for key, value in records:
                p = chosen.get(key) if key is not None else None
                if p is None:
                    p = producer._partitioner(key, every, available)
                    if key is not None:
                        chosen[key] = p
                tp = tps.get(p) or tps.setdefault(p, TopicPartition(topic, p))
                by_tp.setdefault(tp, []).append((key, value))
        acc = producer._message_accumulator
        timeout = producer._request_timeout_ms / 1000
        n = 0
        for tp, records in by_tp.items():
            for batch in await append_to_batches(acc, tp, records, timeout):
                if self.on_sent is not None:
                    batch.future.add_done_callback(self.on_sent)
                if futures is not None:
                    futures.append(batch)
            n += len(records)
        return n


def send_now(acc: Any, batches: list[Any]) -> None:
    """Close ``batches`` (no more appends: they stop lingering) and wake the sender, as aiokafka's
    ``flush_for_commit`` does for all batches; replaces each batch in ``batches`` by its future."""
    for i, batch in enumerate(batches):
        batch._builder.close()
        batches[i] = batch.future
    if not acc._waiter_future.done():
        acc._waiter_future.set_result(None)


async def append_to_batches(acc: Any, tp: TopicPartition, records: Records, timeout: float) -> list[Any]:
    """Append ``records`` (in order) to the producer's pending batches of ``tp``, as aiokafka's
    ``MessageAccumulator.add_message`` does for one record (the last pending batch, a new one
    when there is none, waiting for the sender to drain a full one), but without its per-record
    delivery future: nobody awaits those, and creating and resolving one per record was ~7 % of
    the worker's CPU. Returns the batches written to: each batch's own future reports delivery
    or failure of all its records (and the offset commit flushes them first, as before)."""
    touched: list[Any] = []
    i, total = 0, len(records)
    while i < total:
        if acc._closed:
            raise ProducerClosed()
        if acc._exception is not None:
            raise copy.copy(acc._exception)
        pending = acc._batches.get(tp)
        batch = pending[-1] if pending else acc._append_batch(acc.create_builder(), tp)
        append = batch._builder.append
        start_i = i
        while i < total:
            key, value = records[i]
            if append(timestamp=None, key=key, value=value, headers=[]) is None:
                break  # full (or closed): the sender takes it, later records go to a new batch
            i += 1
        if i > start_i and (not touched or touched[-1] is not batch):
            touched.append(batch)
        if i < total:
            if not acc._waiter_future.done():
                acc._waiter_future.set_result(None)  # wake the sender, as add_message does
            t0 = time.monotonic()
            await batch.wait_drain(timeout)
            timeout -= time.monotonic() - t0
            if timeout <= 0:
                raise KafkaTimeoutError()
    return touched

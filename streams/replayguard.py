"""What the join already published before a restart: read back after each partition assignment.

After a ``kill -9`` the join processes calls and feedback again from its committed offsets, and
derives again the outcomes whose "joined" marker had not reached its changelog, some of which it
had published already. On the first records of each input partition after an assignment (they
are the replay: Faust starts a partition at its committed offset), :class:`ReplayGuard` reads its
output topics back from ``lookback_s`` before the earliest of their timestamps up to the end
offsets the topics had when it first read them (what was published before this assignment), and
keeps the request ids (:class:`~streams.idempotence.PublishedIds`). The join does not publish an
outcome again on a topic that already holds it.

Why this bound holds: an outcome derived from a replayed input record was published when that
record was processed, after it was appended, so its output record's timestamp (the worker's
clock, at append) is not earlier than the input record's (its producer's clock): ``lookback_s``
covers the skew between those clocks. Public aiokafka API only (a plain consumer without a
group: ``offsets_for_times``, ``end_offsets``, ``seek``, ``getmany``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from .idempotence import PublishedIds

log = logging.getLogger(__name__)

IdsOf = Callable[[bytes | None], list[str]]


class ReplayGuard:
    """Request ids the join published on ``topics`` (name -> (partitions, how to read a record's
    ids)) before the current assignment, from ``lookback_s`` before the replay's first input
    record. The partition counts are the declared ones (``services.contracts.topics``)."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, tuple[int, IdsOf]],
        lookback_s: float = 60.0,
        read_timeout_s: float = 60.0,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.client_options = client_options or {}
        self.topics = topics
        self.lookback_s = lookback_s
        self.read_timeout_s = read_timeout_s
        self.ids = PublishedIds()
        self.suppressed = 0
        self._seen_tps: set[Any] = set()
        self._from_s: float | None = None  # outputs published since then are in ``ids``
        self._ends: dict[Any, int] | None = None

    def reset(self) -> None:
        """A new assignment: what comes next is a replay again (Faust's ``on_partitions_assigned``)."""
        self.ids.clear()
        self._seen_tps.clear()
        self._from_s = None
        self._ends = None

    def seen(self, topic: str, request_id: str) -> bool:
        """True when the outcome of ``request_id`` is already on ``topic`` (do not publish it)."""
        if self.ids.seen(topic, request_id):
            self.suppressed += 1
            return True
        return False

    def start_of(self, events: Iterable[Any]) -> float | None:
        """The earliest timestamp (s) of the first record of each input partition not seen since
        the assignment (None: no new partition in ``events``)."""
        first: float | None = None
        for ev in events:
            msg = ev.message
            if msg.tp in self._seen_tps:
                continue
            self._seen_tps.add(msg.tp)
            ts = msg.timestamp
            if ts is not None and (first is None or ts < first):
                first = ts
        return first

    async def prepare(self, events: Iterable[Any]) -> None:
        """Before the join processes ``events``: read back what was published since the first
        record of each input partition new in this batch (only when that goes further back)."""
        first = self.start_of(events)
        if first is None:
            return
        since = first - self.lookback_s
        if self._from_s is not None and since >= self._from_s:
            return
        t0 = time.monotonic()
        n = await self._read(since)
        self._from_s = since
        log.info(
            "replay guard: %d outcome ids already published since %.3f (read %d records in %.2f s)",
            len(self.ids),
            since,
            n,
            time.monotonic() - t0,
        )

    async def _read(self, since_s: float) -> int:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            **self.client_options,
        )
        await consumer.start()
        n = 0
        try:
            tps = [TopicPartition(t, p) for t, (parts, _) in self.topics.items() for p in range(parts)]
            if self._ends is None:  # what was published before this assignment (fixed at first read)
                self._ends = dict(await consumer.end_offsets(tps))
            starts = await consumer.offsets_for_times({tp: int(since_s * 1000) for tp in tps})
            todo: dict[Any, int] = {}
            for tp in tps:
                found, end = starts.get(tp), self._ends.get(tp, 0)
                if found is not None and found.offset < end:
                    todo[tp] = end
            if not todo:
                return 0
            consumer.assign(list(todo))
            for tp in todo:
                consumer.seek(tp, starts[tp].offset)
            deadline = time.monotonic() + self.read_timeout_s
            while todo:
                if time.monotonic() > deadline:
                    log.warning(
                        "replay guard: read of %s not finished in %.0f s: outcomes replayed from "
                        "there may be published twice",
                        sorted(str(tp) for tp in todo),
                        self.read_timeout_s,
                    )
                    break
                for tp, records in (await consumer.getmany(*todo, timeout_ms=500)).items():
                    end = todo.get(tp)
                    if end is None:
                        continue
                    for rec in records:
                        if rec.offset >= end:
                            break
                        self.ids.add(tp.topic, self.topics[tp.topic][1](rec.value))
                        n += 1
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        del todo[tp]
                        consumer.pause(tp)
            return n
        finally:
            await consumer.stop()

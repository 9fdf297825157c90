"""The event emitter: Kafka off the hot path, with a local spool when the broker is away.

``emit`` never waits: it puts the record on a bounded asyncio queue (or, when the queue is full,
appends it to the spool). A background task sends queued records with an idempotent
``acks=all`` producer. When the broker is unreachable, records go to an append-only JSON-lines
spool file; once the broker answers again the spool is replayed in order before anything newer
is sent, and progress through it is checkpointed so an acknowledged record is not sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.contracts.events import Event
from services.contracts.topics import TopicSpec, topic_name

log = logging.getLogger(__name__)

SPOOL_NAME = "spool.jsonl"


@dataclass(frozen=True)
class EmitterConfig:
    """How the emitter reaches Kafka and where it spools."""

    bootstrap: str
    spool_dir: Path
    topic_prefix: str = ""
    client_id: str = "switchyard-gateway"
    queue_size: int = 10000
    batch_size: int = 500
    request_timeout_ms: int = 5000
    linger_ms: int = 5
    retry_backoff_s: float = 1.0
    max_backoff_s: float = 5.0
    delivery_timeout_s: float = 10.0


@dataclass(frozen=True)
class Record:
    topic: str
    key: str | None
    value: str

    def line(self) -> str:
        return (
            json.dumps({"topic": self.topic, "key": self.key, "value": self.value}, separators=(",", ":"))
            + "\n"
        )

    @classmethod
    def parse(cls, line: str) -> Record:
        d = json.loads(line)
        return cls(d["topic"], d.get("key"), d["value"])


class Producer(Protocol):
    """The part of ``aiokafka.AIOKafkaProducer`` the emitter uses."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...


def kafka_producer_factory(cfg: EmitterConfig) -> Callable[[], Producer]:
    """A factory of idempotent ``acks=all`` aiokafka producers."""

    def make() -> Producer:
        from aiokafka import AIOKafkaProducer

        return AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            client_id=cfg.client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=cfg.request_timeout_ms,
            linger_ms=cfg.linger_ms,
        )

    return make


class Spool:
    """An append-only JSON-lines file of records waiting for the broker, replayed in order.

    Replay works on a sealed segment (the live file renamed aside) with a position file, so new
    records keep appending while old ones drain, and a crash mid-replay resumes where it was.
    """

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.live = self.dir / SPOOL_NAME
        self.pending = sum(self._count(p) for p in self.segments()) + self._count(self.live)

    def _count(self, path: Path) -> int:
        if not path.exists():
            return 0
        lines = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        return max(0, lines - self._position(path))

    @staticmethod
    def _pos_file(segment: Path) -> Path:
        return segment.with_suffix(".pos")

    def _position(self, segment: Path) -> int:
        try:
            return int(self._pos_file(segment).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def append(self, records: list[Record]) -> None:
        """Append records durably (flushed and fsynced) at the end of the live file."""
        if not records:
            return
        with self.live.open("a", encoding="utf-8") as f:
            f.write("".join(r.line() for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.pending += len(records)

    def segments(self) -> list[Path]:
        """Sealed segments, oldest first."""
        return sorted(self.dir.glob("segment-*.jsonl"))

    def seal(self) -> None:
        """Move the live file aside as the newest segment (nothing is lost or reordered)."""
        if self.live.exists() and self.live.stat().st_size:
            self.live.rename(self.dir / f"segment-{time.time_ns():020d}.jsonl")

    def unsent(self, segment: Path) -> tuple[int, list[Record]]:
        """The position already sent and the records after it."""
        pos = self._position(segment)
        lines = [line for line in segment.read_text(encoding="utf-8").splitlines() if line.strip()]
        return pos, [Record.parse(line) for line in lines[pos:]]

    def advance(self, segment: Path, pos: int, sent: int) -> None:
        """Checkpoint that ``sent`` more records of ``segment`` were acknowledged."""
        tmp = self._pos_file(segment).with_suffix(".pos.tmp")
        tmp.write_text(str(pos + sent))
        tmp.replace(self._pos_file(segment))
        self.pending = max(0, self.pending - sent)

    def finish(self, segment: Path) -> None:
        segment.unlink(missing_ok=True)
        self._pos_file(segment).unlink(missing_ok=True)

    @property
    def bytes(self) -> int:
        paths = [*self.segments(), self.live]
        return sum(p.stat().st_size for p in paths if p.exists())


class EventEmitter:
    """Bounded queue → idempotent Kafka producer, with an append-only spool when Kafka is away."""

    def __init__(self, cfg: EmitterConfig, producer_factory: Callable[[], Producer] | None = None):
        self.cfg = cfg
        self._factory = producer_factory or kafka_producer_factory(cfg)
        self.queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=cfg.queue_size)
        self._wake = asyncio.Event()
        self.spool = Spool(cfg.spool_dir)
        self._producer: Producer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.sent = 0
        self.connected = False

    # -- hot path ---------------------------------------------------------------------------------

    def emit(self, spec: TopicSpec, event: Event, key: str | None = None) -> None:
        """Queue an event for ``spec``'s topic; never blocks (a full queue spills to the spool)."""
        record = Record(topic_name(spec, self.cfg.topic_prefix), key, event.model_dump_json())
        try:
            self.queue.put_nowait(record)
            self._wake.set()
        except asyncio.QueueFull:
            log.warning("emitter queue full (%d); spooling %s", self.queue.qsize(), record.key)
            self.spool.append([record])

    @property
    def queue_depth(self) -> int:
        return self.queue.qsize()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background sender (connecting to Kafka happens there, with retries)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="switchyard-emitter")

    async def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Send what is queued (within the timeout), spool the rest, close the producer."""
        self._stopping = True
        if self._task is not None:
            try:
                async with asyncio.timeout(flush_timeout_s):
                    await self._drain_done()
            except TimeoutError:
                log.warning("emitter flush timed out; spooling %d queued records", self.queue.qsize())
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        leftover = []
        while not self.queue.empty():
            leftover.append(self.queue.get_nowait())
        self.spool.append(leftover)
        await self._close_producer()

    async def _drain_done(self) -> None:
        while not self.queue.empty() or (self.connected and self.spool.pending):
            await asyncio.sleep(0.02)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is queued or spooled; False if that did not happen in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.queue.empty() and not self.spool.pending and not self._inflight:
                return True
            await asyncio.sleep(0.05)
        return False

    # -- background sender ------------------------------------------------------------------------

    _inflight = 0

    async def _run(self) -> None:
        backoff = self.cfg.retry_backoff_s
        while True:
            try:
                if not await self._ensure_producer():
                    await self._spool_queued()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.cfg.max_backoff_s)
                    continue
                if self.spool.pending:
                    await self._replay()
                batch = await self._next_batch()
                if batch:
                    await self._send(batch)
                backoff = self.cfg.retry_backoff_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the sender must survive anything
                log.warning("emitter: kafka unavailable (%s: %s); spooling", type(exc).__name__, exc)
                await self._abort_producer()
                await self._spool_queued()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.cfg.max_backoff_s)

    async def _ensure_producer(self) -> bool:
        if self._producer is not None:
            return True
        producer = self._factory()
        try:
            await producer.start()
        except Exception as exc:  # noqa: BLE001
            log.warning("emitter: cannot reach kafka at %s (%s)", self.cfg.bootstrap, type(exc).__name__)
            with contextlib.suppress(Exception):
                await producer.stop()
            self.connected = False
            return False
        self._producer = producer
        self.connected = True
        log.info("emitter connected to kafka at %s", self.cfg.bootstrap)
        return True

    async def _close_producer(self) -> None:
        producer, self._producer, self.connected = self._producer, None, False
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await producer.stop()

    async def _next_batch(self) -> list[Record]:
        if self.queue.empty():
            # Wait on an Event with asyncio.timeout, not wait_for(queue.get()): on Python 3.11
            # wait_for can lose the item or swallow a cancellation when the two race.
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            if self.queue.empty():
                return []
        batch: list[Record] = []
        while len(batch) < self.cfg.batch_size and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        self._inflight += len(batch)  # taken off the queue, not yet acknowledged or spooled
        return batch

    async def _spool_queued(self) -> None:
        batch = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if batch:
            self.spool.append(batch)

    async def _deliver(self, records: list[Record]) -> tuple[int, list[Record], BaseException | None]:
        """Send records in order; return (acknowledged count, failed records in order, an error).

        A delivery that does not finish within ``delivery_timeout_s`` (a broker that died with its
        metadata still cached makes aiokafka retry forever) aborts the producer, so nothing it
        still holds can be sent later behind our back, and counts the unacknowledged as failed.
        """
        producer = self._producer
        assert producer is not None
        futures: list[Any] = []
        results: list[Any] = []
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self.cfg.delivery_timeout_s):
                for r in records:
                    key = r.key.encode("utf-8") if r.key else None
                    futures.append(await producer.send(r.topic, value=r.value.encode("utf-8"), key=key))
                results = list(await asyncio.gather(*futures, return_exceptions=True))
        except Exception as exc:  # noqa: BLE001 - a timeout or a send() error: sort out what got through
            error = exc
            results = [f.exception() if f.done() and not f.cancelled() else exc for f in futures] + [exc] * (
                len(records) - len(futures)
            )
            await self._abort_producer()
        failed = [r for r, res in zip(records, results, strict=True) if isinstance(res, BaseException)]
        if failed and error is None:
            error = next(res for res in results if isinstance(res, BaseException))
        return len(records) - len(failed), failed, error

    async def _abort_producer(self) -> None:
        """Drop the producer without letting it deliver what it still holds (we spool that)."""
        producer, self._producer, self.connected = self._producer, None, False
        if producer is None:
            return
        with contextlib.suppress(Exception):
            producer._message_accumulator.fail_all(RuntimeError("emitter aborted the producer"))  # type: ignore[attr-defined]
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if task is not None:
            task.cancel()
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(5):
                await producer.stop()

    async def _send(self, batch: list[Record]) -> None:
        try:
            acked, failed, error = await self._deliver(batch)
        except BaseException:
            self.spool.append(batch)
            raise
        finally:
            self._inflight -= len(batch)
        self.sent += acked
        if failed:
            self.spool.append(failed)
            raise ConnectionError(f"{len(failed)} of {len(batch)} events not acknowledged: {error}")

    async def _replay(self) -> None:
        """Send every spooled record in order, checkpointing after each acknowledged chunk; records
        that fail again go back to the spool (never resent once acknowledged)."""
        self.spool.seal()
        for segment in self.spool.segments():
            pos, records = self.spool.unsent(segment)
            log.info("emitter replaying %d spooled records from %s", len(records), segment.name)
            for i in range(0, len(records), self.cfg.batch_size):
                chunk = records[i : i + self.cfg.batch_size]
                acked, failed, error = await self._deliver(chunk)
                if failed:
                    self.spool.append(failed)
                self.spool.advance(segment, pos + i, len(chunk))
                self.sent += acked
                if failed:
                    raise ConnectionError(f"replay interrupted: {error}")
            self.spool.finish(segment)

"""The event emitter: every event durable on local disk within a group commit, Kafka off the
hot path.

``emit`` never waits: it appends the record to an in-memory group. A committer task writes each
group to an append-only JSON-lines log (the spool) with one ``write`` + ``fsync`` in a worker
thread, so an event whose client got its answer is on disk at most one group commit later
(``commit_interval_s``, plus the fsync itself: the loss window a ``kill -9`` can hit). A sender
task drains the log to Kafka with an idempotent ``acks=all`` producer, in order, checkpointing
its position after each acknowledged chunk and deleting a segment once it is all acknowledged.
When the broker is away the log simply grows; when it is back the sender catches up in order.
After a crash the log is replayed from the checkpoint: nothing durable is lost, and at most the
last unacknowledged chunk is sent twice (consumers are idempotent on ``request_id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    queue_size: int = 10000  # events held in memory waiting for a group commit; more spill at once
    batch_size: int = 500
    commit_interval_s: float = 0.0  # extra wait to gather a group (0: the fsync in progress gathers it)
    request_timeout_ms: int = 5000
    linger_ms: int = 5
    retry_backoff_s: float = 1.0
    max_backoff_s: float = 5.0
    delivery_timeout_s: float = 10.0
    client_options: dict[str, Any] = field(default_factory=dict)  # KafkaSettings.client_options()


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
            **cfg.client_options,
        )

    return make


class Spool:
    """An append-only JSON-lines log of records not yet acknowledged by Kafka, sent in order.

    Sending works on a sealed segment (the live file renamed aside) with a position file, so new
    records keep appending while old ones drain, and a crash mid-send resumes where it was.
    ``append`` (a worker thread's) and ``seal`` take one lock, so a record is never appended to
    a segment that is already being sent.
    """

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.live = self.dir / SPOOL_NAME
        self._lock = threading.Lock()
        # written by one side each: appended (the committer), acknowledged (the sender)
        self._appended = sum(self._count(p) for p in self.segments()) + self._count(self.live)
        self._acked = 0

    @property
    def pending(self) -> int:
        """Records on disk that Kafka has not acknowledged yet."""
        return max(0, self._appended - self._acked)

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
        """Append records durably (written and fsynced) at the end of the live file."""
        if not records:
            return
        data = "".join(r.line() for r in records)
        with self._lock:
            with self.live.open("a", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._appended += len(records)

    def segments(self) -> list[Path]:
        """Sealed segments, oldest first."""
        return sorted(self.dir.glob("segment-*.jsonl"))

    def seal(self) -> None:
        """Move the live file aside as the newest segment (nothing is lost or reordered)."""
        with self._lock:
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
        self._acked += sent

    def finish(self, segment: Path) -> None:
        segment.unlink(missing_ok=True)
        self._pos_file(segment).unlink(missing_ok=True)

    @property
    def bytes(self) -> int:
        paths = [*self.segments(), self.live]
        return sum(p.stat().st_size for p in paths if p.exists())


class EventEmitter:
    """In-memory group → fsynced local log → idempotent Kafka producer, in order."""

    def __init__(self, cfg: EmitterConfig, producer_factory: Callable[[], Producer] | None = None):
        self.cfg = cfg
        self._factory = producer_factory or kafka_producer_factory(cfg)
        self._group: list[Record] = []  # emitted, not yet on disk
        self._committing: list[Record] = []  # being written by the committer now
        self._have_group = asyncio.Event()
        self._wake = asyncio.Event()  # new records on disk for the sender
        self.spool = Spool(cfg.spool_dir)
        self._producer: Producer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = 0
        self.connected = False

    # -- hot path ---------------------------------------------------------------------------------

    def emit(self, spec: TopicSpec, event: Event, key: str | None = None) -> None:
        """Hand an event to the next group commit; never waits on Kafka. A group over
        ``queue_size`` (the committer cannot keep up, or is not running) is written at once."""
        self._group.append(Record(topic_name(spec, self.cfg.topic_prefix), key, event.model_dump_json()))
        if len(self._group) > self.cfg.queue_size:
            log.warning("emitter: %d events waiting for a group commit; writing them now", len(self._group))
            group, self._group = self._group, []
            self.spool.append(group)
            self._wake.set()
        else:
            self._have_group.set()

    @property
    def queue_depth(self) -> int:
        """Events not yet on disk (the loss window of a crash now)."""
        return len(self._group) + len(self._committing)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the committer and the sender (connecting to Kafka happens there, with retries)."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._commit_loop(), name="switchyard-emitter-commit"),
                asyncio.create_task(self._run(), name="switchyard-emitter-send"),
            ]
            if self._group:
                self._have_group.set()

    async def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Write what is in memory to disk, send what Kafka takes within the timeout (the rest
        stays on disk for the next start), close the producer."""
        await self._commit_now()
        if self._tasks:
            if self.spool.pending:
                try:
                    async with asyncio.timeout(flush_timeout_s):
                        await self._drained()
                except TimeoutError:
                    log.warning("emitter: %d events left on disk for the next start", self.spool.pending)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks = []
        await self._commit_now()  # a group a cancelled commit left behind
        await self._close_producer()

    async def _drained(self) -> None:
        while self.spool.pending or self.queue_depth:
            if not self.connected and not any(not t.done() for t in self._tasks):
                return
            await asyncio.sleep(0.02)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every emitted event is acknowledged by Kafka; False if not in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.queue_depth and not self.spool.pending:
                return True
            await asyncio.sleep(0.05)
        return False

    # -- group commit -----------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._have_group.wait()
            if self.cfg.commit_interval_s > 0:
                await asyncio.sleep(self.cfg.commit_interval_s)
            self._have_group.clear()
            await self._commit_now()

    async def _commit_now(self) -> None:
        """Write the current group (one write + fsync, off the event loop)."""
        if not self._group:
            return
        self._committing, self._group = self._group, []
        try:
            await asyncio.to_thread(self.spool.append, self._committing)
        except OSError:
            log.exception("emitter: cannot write %d events to %s", len(self._committing), self.spool.dir)
            self._group[:0] = self._committing  # keep them for the next commit, in order
            await asyncio.sleep(0.1)
            self._have_group.set()
        finally:
            self._committing = []
        self._wake.set()

    # -- sender -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.cfg.retry_backoff_s
        while True:
            try:
                if not self.spool.pending:
                    await self._wait_for_records(0.5)
                    continue
                if not await self._ensure_producer():
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.cfg.max_backoff_s)
                    continue
                await self._replay()
                backoff = self.cfg.retry_backoff_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the sender must survive anything
                log.warning("emitter: kafka away (%s: %s); events wait on disk", type(exc).__name__, exc)
                await self._abort_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.cfg.max_backoff_s)

    async def _wait_for_records(self, timeout_s: float) -> None:
        # Wait on an Event with asyncio.timeout, not wait_for: on Python 3.11 wait_for can
        # swallow a cancellation when the two race.
        self._wake.clear()
        if self.spool.pending:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

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

    async def _replay(self) -> None:
        """Send every record on disk in order, checkpointing after each acknowledged chunk;
        records that fail go back to the end of the log (never resent once acknowledged)."""
        await asyncio.to_thread(self.spool.seal)
        for segment in self.spool.segments():
            pos, records = self.spool.unsent(segment)
            if len(records) > 10 * self.cfg.batch_size:
                log.info("emitter: sending %d records from %s", len(records), segment.name)
            for i in range(0, len(records), self.cfg.batch_size):
                chunk = records[i : i + self.cfg.batch_size]
                acked, failed, error = await self._deliver(chunk)
                if failed:
                    await asyncio.to_thread(self.spool.append, failed)
                self.spool.advance(segment, pos + i, len(chunk))
                self.sent += acked
                if failed:
                    raise ConnectionError(f"replay interrupted: {error}")
            self.spool.finish(segment)

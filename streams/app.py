"""The Faust app: ``create_app(settings, kafka)`` wires topics, tables, agents, timers and views.

Agents, by domain:

* **join** (``switchyard.calls.v1`` + ``switchyard.feedback.v1``, keyed by request_id): the
  call/feedback join table, outcomes to ``switchyard.outcomes.v1``, hard-query mining of calls,
  router features per task to an internal topic;
* **metrics + drift** (the join's outcomes again, one record per task and batch on an internal
  topic keyed by task): per-task tumbling-window and all-time tables, quality/calibration
  detectors, alerts and retrain requests;
* **input drift** (the internal features topic, keyed by task): evidently data-drift checks;
* **alerts** (``switchyard.alerts.v1``): delivery to the on-call webhook, de-duplicated.

Values are consumed as raw bytes and validated with the pydantic contracts; a record that fails
goes to the dead-letter topic, is counted, and the agent goes on. Nothing runs at import.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import KafkaTimeoutError, ProducerClosed
from aiokafka.structs import TopicPartition
from faust.sensors import Monitor
from faust.streams import _current_event  # see _bind()
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import TypeAdapter, ValidationError

from services.catalog import Catalog, load_catalog
from services.contracts import (
    AlertEvent,
    CallEvent,
    ContractError,
    DeadLetter,
    Event,
    FeedbackEvent,
    OutcomeEvent,
)
from services.contracts.settings import KafkaSettings
from services.contracts.topics import (
    ALERTS,
    CALLS,
    DEADLETTER,
    FEEDBACK,
    HARD_QUERIES,
    OUTCOMES,
    RETRAIN,
    TopicSpec,
    topic_name,
)

from . import eventloop, fastdrain, windows
from .alerts import DeliveryLog, WebhookError, WebhookNotifier
from .drift import FeatureBatch, MonitorResult, TaskMonitor
from .join import CallFeedbackJoin, entry_json, entry_plain, json_bytes
from .mining import mine_call, mine_outcome
from .settings import StreamsSettings

log = logging.getLogger(__name__)


_DELETED = object()


class BatchWrites:
    """A write-back overlay on a table for one batch: the join reads its own writes at once, and
    each key reaches the changelog once per batch (a call and its feedback in the same batch
    cost one changelog record, not two). :meth:`flush` writes every touched key under the event
    that last touched it, so the record lands in that key's partition."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.event: Any = None
        self._local: dict[str, Any] = {}
        self._owner: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._local:
            v = self._local[key]
            return default if v is _DELETED else v
        v = self._read(key)
        return default if v is None else v

    def _read(self, key: str) -> Any:
        # The table's store directly: ``table.get`` of a missing key costs a KeyError in Faust.
        data = getattr(self.table, "data", None)
        return data.get(key) if data is not None else self.table.get(key)

    def __getitem__(self, key: str) -> Any:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        self._local[key] = value
        self._owner[key] = self.event

    def __delitem__(self, key: str) -> None:
        self._local[key] = _DELETED
        self._owner[key] = self.event

    def keys(self) -> list[str]:
        return list({*self.table.keys(), *(k for k, v in self._local.items() if v is not _DELETED)})

    def flush(self) -> None:
        """Write the batch's changes to the table (and its changelog) through Faust."""
        for key, value in self._local.items():
            _bind(self._owner[key])
            if value is _DELETED:
                self.table.pop(key, None)
            else:
                self.table[key] = entry_plain(value)
        self._local.clear()
        self._owner.clear()

    def flush_direct(self, emit: Any) -> int:
        """Write the batch's changes to the table's store and hand its changelog records to
        ``emit(topic, key, value, partition)`` (an :class:`Outbox`): the same records (JSON key
        and value, a tombstone for a delete, the partition of the event that last touched the
        key) as :meth:`flush`, without Faust's per-record send machinery (the join writes one
        record per request: the worker's largest producer). The table must use the JSON key and
        value serializers and a store that needs no offset bookkeeping (memory)."""
        topic = self.table.changelog_topic.get_topic_name()
        data = self.table.data
        for key, value in self._local.items():
            if value is _DELETED:
                data.pop(key, None)
                raw = None
            else:
                data[key] = value
                raw = entry_json(value)
            emit(topic, _dumps(key), raw, self._owner[key].message.partition)
        n = len(self._local)
        self._local.clear()
        self._owner.clear()
        return n


_dumps = json_bytes


class Outbox:
    """Output records of one batch, appended to Faust's producer per topic partition.

    ``Topic.send`` costs, per record, Faust's channel, future-message and sensor machinery, and
    aiokafka's ``send`` a metadata look-up and partition check (two set copies) per record. Here
    the metadata is looked up once per topic and batch, a keyed record goes to the partition the
    producer's own partitioner picks (as ``send`` would: the same partition as before), and each
    record is appended to the producer's pending batch of its partition (as ``send`` does last,
    waiting only when that batch is full). The producer is Faust's, so the offset commit still
    flushes these records first (at-least-once, as with ``Topic.send``); ``on_sent`` gets the
    future of the last record of each partition (to log and count failures: a failed request
    fails all the records of its batch)."""

    def __init__(self, on_sent: Any = None) -> None:
        self.on_sent = on_sent
        self._groups: dict[tuple[str, int | None], list[tuple[bytes | None, bytes | None]]] = {}

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        self._groups.setdefault((topic, partition), []).append((key, value))

    def __len__(self) -> int:
        return sum(len(v) for v in self._groups.values())

    async def send(self, faust_producer: Any) -> int:
        """Hand every record to the producer; return how many."""
        if not self._groups:
            return 0
        producer = faust_producer._ensure_producer()  # the aiokafka producer Faust runs
        groups, self._groups = self._groups, {}
        txn = getattr(producer, "_txn_manager", None)
        if txn is not None and txn.transactional_id is not None:  # exactly-once: aiokafka's own path
            for (topic, partition), records in groups.items():
                for key, value in records:
                    await faust_producer.send(topic, key, value, partition, None, None)
            return sum(len(r) for r in groups.values())
        by_tp: dict[TopicPartition, list[tuple[bytes | None, bytes | None]]] = {}
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
        bulk = _bulk_appendable(acc)
        for tp, records in by_tp.items():
            if bulk:
                for batch in await _append_to_batches(acc, tp, records, timeout):
                    if self.on_sent is not None:
                        batch.future.add_done_callback(self.on_sent)
            else:
                fut = None
                for key, value in records:
                    fut = await acc.add_message(tp, key, value, timeout)
                if fut is not None and self.on_sent is not None:
                    fut.add_done_callback(self.on_sent)
            n += len(records)
        return n


def _bulk_appendable(acc: Any) -> bool:
    """Whether ``acc`` is aiokafka's ``MessageAccumulator`` as :func:`_append_to_batches` knows it."""
    return all(hasattr(acc, a) for a in ("_batches", "_append_batch", "create_builder", "_waiter_future"))


async def _append_to_batches(
    acc: Any, tp: TopicPartition, records: list[tuple[bytes | None, bytes | None]], timeout: float
) -> list[Any]:
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


class RecordQuietMonitor(Monitor):
    """Faust's ``Monitor`` sensor without its per-record bookkeeping (settings ``FAUST_MONITOR``
    off, the default). Faust calls it for every record in, every stream event in and out, every
    record out and every table read and write: ~3 % of the worker's CPU, for counters only Faust's
    own stats views read (the worker's ``/metrics`` are its own). Everything else (commits,
    rebalances, assignment, end offsets) is kept."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None

    def on_table_del(self, table: Any, key: Any) -> None:
        return None


class StreamMetrics:
    """The worker's Prometheus metrics, in their own registry (one per app)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "switchyard_streams_"
        self.events = Counter(p + "events_total", "Records consumed, by topic.", ["topic"], registry=r)
        self.dead_letters = Counter(
            p + "dead_letters_total", "Records sent to the dead-letter topic.", ["topic"], registry=r
        )
        self.outcomes = Counter(p + "outcomes_total", "Outcomes emitted by the join.", registry=r)
        self.duplicates = Counter(
            p + "join_duplicates_total", "Redelivered calls and duplicate feedback.", registry=r
        )
        self.expired = Counter(
            p + "join_expired_total", "Calls whose feedback never came within the TTL.", registry=r
        )
        self.alerts = Counter(p + "alerts_total", "Alerts emitted.", ["detector", "status"], registry=r)
        self.webhook_sent = Counter(
            p + "webhook_deliveries_total", "Alerts delivered to on-call.", registry=r
        )
        self.webhook_failures = Counter(p + "webhook_failures_total", "Alerts on-call never got.", registry=r)
        self.hard_queries = Counter(p + "hard_queries_total", "Hard queries mined.", ["reason"], registry=r)
        self.errors = Counter(
            p + "processing_errors_total", "Batches a stage failed on.", ["stage"], registry=r
        )
        self.retrain = Counter(p + "retrain_requests_total", "Retrain requests emitted.", registry=r)
        self.lag = Gauge(
            p + "consumer_lag", "Records behind the high-water mark.", ["topic", "partition"], registry=r
        )
        self.rate = Gauge(p + "events_per_second", "Records consumed per second (last interval).", registry=r)
        self.join_entries = Gauge(p + "join_entries", "Entries in the local join table.", registry=r)
        self._last = (time.monotonic(), 0.0)
        self._children: dict[str, Any] = {}

    def consumed(self, topic: str, n: int = 1) -> None:
        """Count ``n`` consumed records (label children cached: this runs for every batch)."""
        if n <= 0:
            return
        child = self._children.get(topic)
        if child is None:
            child = self._children[topic] = self.events.labels(topic=topic)
        child.inc(n)

    def total_events(self) -> float:
        return sum(s.value for m in self.events.collect() for s in m.samples if s.name.endswith("_total"))

    def tick(self) -> float:
        """Update the events/s gauge from the counter; return the rate."""
        now, total = time.monotonic(), self.total_events()
        t0, n0 = self._last
        rate = (total - n0) / (now - t0) if now > t0 else 0.0
        self._last = (now, total)
        self.rate.set(rate)
        return rate


@dataclass
class Wiring:
    """Handles on what ``create_app`` built (for views, tests and the benchmark)."""

    settings: StreamsSettings
    prefix: str
    catalog: Catalog
    metrics: StreamMetrics
    joiner: CallFeedbackJoin
    monitor: TaskMonitor
    tables: dict[str, Any] = field(default_factory=dict)
    topics: dict[str, Any] = field(default_factory=dict)
    notifier: WebhookNotifier | None = None
    warm: bool = False  # evidently imported (the worker's warm-up task finished)
    join_inputs: int = 0  # calls and feedback records the join has processed


def _wall_clock(event: Any = None) -> float:
    return time.time()


def _bind(event: Any) -> None:
    """Make ``event`` the current event, so table writes go to its partition's changelog.

    Batches from ``take_events`` leave the last event current; each table write must instead be
    attributed to the event of its own key (hence the partition), as per-event iteration would.
    """
    _current_event.set(weakref.ref(event))


def create_app(settings: StreamsSettings, kafka: KafkaSettings, catalog: Catalog | None = None) -> faust.App:
    """Build the Faust app (not started). ``app.switchyard`` holds the :class:`Wiring`."""
    catalog = catalog or load_catalog(settings.catalog_path)
    tiers = {m.id: m.tier for m in catalog.models}
    cheap_tier = catalog.tiers[0] if catalog.tiers else None
    prefix = kafka.topic_prefix
    settings.faust_dir.mkdir(parents=True, exist_ok=True)
    if settings.fast_drain and fastdrain.install():
        log.info("fast record delivery on (streams/fastdrain.py)")
    brokers = [f"kafka://{h.strip()}" for h in kafka.bootstrap.split(",") if h.strip()]
    app = faust.App(
        settings.app_id,
        broker=brokers,
        broker_client_id=kafka.client_id,
        datadir=str(settings.faust_dir),
        store="memory://",
        autodiscover=False,
        web_enabled=settings.web_enabled,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=OUTCOMES.partitions,
        topic_replication_factor=settings.replication,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        producer_linger=settings.producer_linger_s,
        producer_max_batch_size=1_048_576,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        **({} if settings.faust_monitor else {"Monitor": RecordQuietMonitor}),
    )
    metrics = StreamMetrics()

    def raw_topic(spec: Any, **kw: Any) -> faust.TopicT:
        return app.topic(
            topic_name(spec, prefix),
            key_serializer="raw",
            value_serializer="raw",
            partitions=spec.partitions,
            **kw,
        )

    calls_name, feedback_name = topic_name(CALLS, prefix), topic_name(FEEDBACK, prefix)
    calls_and_feedback = app.topic(calls_name, feedback_name, key_serializer="raw", value_serializer="raw")
    outcomes_t = raw_topic(OUTCOMES)
    outcomes_name, hard_name = topic_name(OUTCOMES, prefix), topic_name(HARD_QUERIES, prefix)
    alerts_t = raw_topic(ALERTS)
    hard_t = raw_topic(HARD_QUERIES)
    retrain_t = raw_topic(RETRAIN)
    dlq_t = raw_topic(DEADLETTER)
    features_t = app.topic(
        f"{prefix}{settings.app_id}-call-features",
        internal=True,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        partitions=OUTCOMES.partitions,
    )
    features_name = features_t.get_topic_name()
    # The join's outcomes again, one record per task and batch (a JSON array of the outcome
    # records it publishes on switchyard.outcomes.v1), keyed by task: what the monitor consumes.
    # Same partitioning and order per task as the public topic, ~1/20 of the records to consume.
    task_outcomes_t = app.topic(
        f"{prefix}{settings.app_id}-task-outcomes",
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
        partitions=OUTCOMES.partitions,
    )
    task_outcomes_name = task_outcomes_t.get_topic_name()

    table_schema = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")
    join_table = app.Table("join", default=None, partitions=CALLS.partitions, schema=table_schema)
    window_table = app.Table(
        "task-window",
        default=dict,
        partitions=OUTCOMES.partitions,
        schema=table_schema,
    ).tumbling(settings.window_s, expires=settings.window_expires_s)
    # Windows follow the worker's wall clock (the same in agents and in the /stats/ view).
    window_table = window_table.relative_to(_wall_clock)
    totals_table = app.Table(
        "task-totals",
        default=None,
        partitions=OUTCOMES.partitions,
        schema=table_schema,
    )
    detector_table = app.Table(
        "detectors",
        default=None,
        partitions=OUTCOMES.partitions,
        schema=table_schema,
    )
    alert_table = app.Table(
        "alert-state",
        default=None,
        partitions=OUTCOMES.partitions,
        schema=table_schema,
    )
    delivery_table = app.Table(
        "alert-deliveries",
        default=None,
        partitions=ALERTS.partitions,
        schema=table_schema,
    )

    def _delete_join_entry(key: str, entry: dict[str, Any]) -> None:
        # Called from a timer (no current event): tombstone the key in its own changelog partition.
        join_table.data.pop(key, None)
        if entry.get("p") is not None:
            join_table.send_changelog(entry["p"], key, None, value_serializer="raw")

    join_writes = BatchWrites(join_table)
    joiner = CallFeedbackJoin(
        join_writes,
        settings.join_ttl_s,
        tiers,
        settings.accept_threshold,
        on_delete=_delete_join_entry,
    )
    monitor = TaskMonitor(
        settings, detector_table, alert_table, settings.load_reference(), defer_reports=True
    )
    delivery = DeliveryLog(delivery_table)
    notifier = None
    if settings.webhook_url:
        notifier = WebhookNotifier(
            settings.webhook_url,
            settings.webhook_kind,
            routing_key=settings.pagerduty_routing_key,
            timeout_s=settings.webhook_timeout_s,
            attempts=settings.webhook_attempts,
        )
    wiring = Wiring(
        settings,
        prefix,
        catalog,
        metrics,
        joiner,
        monitor,
        tables={
            "join": join_table,
            "window": window_table,
            "totals": totals_table,
            "detectors": detector_table,
            "alerts": alert_table,
            "deliveries": delivery_table,
        },
        topics={
            "outcomes": outcomes_t,
            "alerts": alerts_t,
            "hard_queries": hard_t,
            "retrain": retrain_t,
            "deadletter": dlq_t,
            "features": features_t,
            "task_outcomes": task_outcomes_t,
        },
        notifier=notifier,
    )
    app.switchyard = wiring  # type: ignore[attr-defined]

    async def dead_letter(event: Any, error: Exception, consumer: str, value: bytes | None = None) -> None:
        msg = event.message
        raw = value if value is not None else msg.value
        raw = raw if isinstance(raw, bytes | bytearray) else str(raw).encode()
        key = msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes | bytearray) else msg.key
        record = DeadLetter(
            source_topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=key,
            value=raw.decode("utf-8", "replace")[:100_000],
            error=str(error)[:2000],
            consumer=consumer,
        )
        await dlq_t.send(value=record.to_bytes())
        metrics.dead_letters.labels(topic=msg.topic).inc()
        log.warning("dead-lettered %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, error)

    async def publish(res: MonitorResult) -> None:
        if res.reports:  # evidently is CPU-bound: keep the event loop free while reports are written
            await asyncio.to_thread(res.write_reports)
        for alert in res.alerts:
            await alerts_t.send(key=alert.task.encode(), value=alert.to_bytes())
            metrics.alerts.labels(detector=alert.detector, status=alert.status.value).inc()
            log.warning("alert %s %s: %s", alert.status.value, alert.alert_id, alert.summary)
        for req in res.retrain:
            await retrain_t.send(value=req.to_bytes())
            metrics.retrain.inc()

    async def send_keyed(topic: Any, key: str, event: Event) -> None:
        await topic.send(key=key.encode(), value=event.to_bytes())

    def _sent(fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            metrics.errors.labels(stage="produce").inc()
            log.error("a batch of records was not produced: %r", fut.exception())

    outbox = Outbox(_sent)

    @app.agent(calls_and_feedback, name="join")
    async def join_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, settings.batch_within_s):
            now = time.time()
            outcomes: list[OutcomeEvent] = []
            hard: list[Any] = []
            features: dict[str, FeatureBatch] = {}
            n_calls = 0
            for ev in events:
                topic = ev.message.topic
                n_calls += topic == calls_name
                join_writes.event = ev
                dup_before = joiner.stats.duplicates
                try:
                    if topic == calls_name:
                        call = CallEvent.from_bytes(ev.value)
                        out = joiner.on_call(call, now, ev.message.partition)
                        if joiner.stats.duplicates == dup_before:
                            hq = mine_call(call, settings.low_margin)
                            if hq is not None:
                                hard.append(hq)
                            fb = features.get(call.task)
                            if fb is None:
                                fb = features[call.task] = FeatureBatch()
                            fb.add(call.scores, call.chosen_model, call.prompt, call.usage.prompt_tokens)
                    else:
                        out = joiner.on_feedback(
                            FeedbackEvent.from_bytes(ev.value), now, ev.message.partition
                        )
                except ContractError as exc:
                    await dead_letter(ev, exc, "join")
                    continue
                if joiner.stats.duplicates != dup_before:
                    metrics.duplicates.inc()
                if out is not None:
                    outcomes.append(out)
                    hq = mine_outcome(out, cheap_tier)
                    if hq is not None:
                        hard.append(hq)
            metrics.consumed(calls_name, n_calls)
            metrics.consumed(feedback_name, len(events) - n_calls)
            encoded = [(o.task.encode(), o.to_bytes()) for o in outcomes]  # (key, value), in order
            if settings.direct_produce:
                join_writes.flush_direct(outbox.add)
                for task, raw in encoded:
                    outbox.add(outcomes_name, task, raw)
                for task, batch in task_batches(encoded):
                    outbox.add(task_outcomes_name, task, batch)
                for hq in hard:
                    outbox.add(hard_name, hq.task.encode(), hq.to_bytes())
                for task, batch in features.items():
                    outbox.add(features_name, task.encode(), _dumps(batch.record()))
                await outbox.send(app.producer)
            else:
                join_writes.flush()
                for task, raw in encoded:
                    await outcomes_t.send(key=task, value=raw)
                for task, batch in task_batches(encoded):
                    await task_outcomes_t.send(key=task, value=batch)
                for hq in hard:
                    await send_keyed(hard_t, hq.task, hq)
                for task, batch in features.items():
                    await features_t.send(key=task, value=batch.record())
            metrics.outcomes.inc(len(outcomes))
            for hq in hard:
                metrics.hard_queries.labels(reason=hq.reason.value).inc()
            wiring.join_inputs += len(events)

    @app.agent(task_outcomes_t, name="monitor")
    async def monitor_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, settings.batch_within_s):
            by_task: dict[str, tuple[list[OutcomeEvent], Any]] = {}
            metrics.consumed(task_outcomes_name, len(events))
            for ev in events:
                outs, bad = decode_outcomes(ev.value)
                for raw, exc in bad:
                    await dead_letter(ev, exc, "monitor", raw)
                for o in outs:
                    batch = by_task.setdefault(o.task, ([], ev))
                    batch[0].append(o)
                    by_task[o.task] = (batch[0], ev)
            for task, (outs, ev) in by_task.items():
                _bind(ev)  # the last event of this task: its partition owns the task's table entries
                window_table[task] = windows.add_outcomes(window_table[task].value(), outs, cheap_tier)
                totals_table[task] = windows.add_outcomes(totals_table.get(task), outs, cheap_tier)
                try:
                    result = monitor.on_outcomes(task, outs)
                except Exception:  # a detector bug must not stop the other tasks or the worker
                    metrics.errors.labels(stage="monitor").inc()
                    log.exception("monitor failed on a batch of task %s (%d outcomes)", task, len(outs))
                    continue
                await publish(result)

    @app.agent(features_t, name="input-drift")
    async def input_drift_agent(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            if not settings.input_drift_enabled:
                continue
            task = ev.key.decode() if isinstance(ev.key, bytes) else str(ev.key)
            try:
                due = monitor.add_features(task, ev.value)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:  # not a features record
                await dead_letter(ev, exc, "input-drift")
                continue
            if due:
                result = await asyncio.to_thread(monitor.run_input_check, task)
                _bind(ev)
                await publish(monitor.apply_input_check(task, result))

    @app.agent(alerts_t, name="oncall")
    async def oncall_agent(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            metrics.consumed(ev.message.topic)
            try:
                alert = AlertEvent.from_bytes(ev.value)
            except ContractError as exc:
                await dead_letter(ev, exc, "oncall")
                continue
            if delivery.seen(alert):
                continue
            if notifier is not None:
                try:
                    await notifier.send(alert)
                    metrics.webhook_sent.inc()
                except WebhookError as exc:
                    metrics.webhook_failures.inc()
                    log.error("%s", exc)
            delivery.mark(alert)

    @app.task
    async def warm_up() -> None:
        # evidently takes seconds to import: do it off the loop at start, not at the first alert.
        await asyncio.to_thread(importlib.import_module, "evidently.presets")
        wiring.warm = True

    @app.timer(settings.join_sweep_s)
    async def sweep_join() -> None:
        n0 = joiner.stats.expired
        dropped = joiner.sweep(time.time())
        metrics.expired.inc(joiner.stats.expired - n0)
        metrics.join_entries.set(len(join_table))
        if dropped:
            log.info("join: swept %d expired entries", dropped)

    @app.timer(5.0)
    async def observe() -> None:
        metrics.tick()
        consumer = app.consumer
        read = getattr(consumer, "_read_offset", {})
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            pos = read.get(tp)
            if high is not None:
                metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(high - (pos + 1 if pos is not None else 0), 0)
                )

    @app.page("/metrics")
    async def metrics_view(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    @app.page("/stats/")
    async def stats_view(self: Any, request: Any) -> Any:
        return self.json(stats_snapshot(wiring))

    @app.page("/progress/")
    async def progress_view(self: Any, request: Any) -> Any:
        # Cheap to poll (the benchmark does, 4 times a second): outcomes in the all-time tables.
        events = sum((agg or {}).get("n", 0) for agg in totals_table.values())
        return self.json(
            {
                "events": events,
                "join_inputs": wiring.join_inputs,
                "warm": wiring.warm,
                "event_loop": eventloop.running(),
            }
        )

    return app


def internal_input_topics(app: faust.App) -> tuple[TopicSpec, ...]:
    """The app's own topics that its agents consume (router features, per-task outcome batches).

    Faust declares internal topics just before it subscribes, and a topic the broker's metadata
    does not list yet is dropped from the subscription ("Ignoring missing topic") until a later
    rebalance: the agent then silently gets no partitions. The worker creates these first and
    waits until the metadata lists them (``infra.topics.apply_topics``)."""
    wiring: Wiring = app.switchyard  # type: ignore[attr-defined]
    rf = wiring.settings.replication
    return tuple(
        TopicSpec(
            t.get_topic_name(),
            "task",
            model,
            partitions=t.partitions or OUTCOMES.partitions,
            replication=rf,
            retention_ms=OUTCOMES.retention_ms,  # what the monitor has not read yet is kept as long
        )
        for t, model in ((wiring.topics["features"], Event), (wiring.topics["task_outcomes"], OutcomeEvent))
    )


_OUTCOME_LIST = TypeAdapter(list[OutcomeEvent])


def task_batches(encoded: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The monitor's records for a batch of encoded outcomes ``(task key, outcome JSON)``: one per
    task, a JSON array of that task's outcome records in order (what :func:`decode_outcomes` reads)."""
    by_task: dict[bytes, list[bytes]] = {}
    for key, raw in encoded:
        by_task.setdefault(key, []).append(raw)
    return [(key, b"[" + b",".join(raws) + b"]") for key, raws in by_task.items()]


def decode_outcomes(raw: bytes) -> tuple[list[OutcomeEvent], list[tuple[bytes, Exception]]]:
    """A per-task batch record (a JSON array of outcome records): the valid outcomes, in order,
    and each invalid item as (its raw JSON, the error). One pydantic call for a clean batch."""
    try:
        return _OUTCOME_LIST.validate_json(raw), []
    except ValidationError:
        pass
    try:
        items = json.loads(raw)
    except ValueError as exc:
        return [], [(raw, ContractError(f"not a JSON array of outcomes: {exc}"))]
    if not isinstance(items, list):
        return [], [(raw, ContractError("not a JSON array of outcomes"))]
    outs: list[OutcomeEvent] = []
    bad: list[tuple[bytes, Exception]] = []
    for item in items:
        try:
            outs.append(OutcomeEvent.model_validate(item))
        except ValidationError as exc:
            bad.append((_dumps(item), ContractError(f"invalid OutcomeEvent: {exc.errors()[0]['msg']}")))
    return outs, bad


def stats_snapshot(wiring: Wiring) -> dict[str, Any]:
    """Per-task numbers (current window and all-time), firing alerts and join counters."""
    out: dict[str, Any] = {"tasks": {}, "firing": wiring.monitor.firing(), "join": vars(wiring.joiner.stats)}
    window, totals = wiring.tables["window"], wiring.tables["totals"]
    for task in list(totals.keys()):
        out["tasks"][task] = {
            "window": windows.summarise(window[task].value()),
            "total": windows.summarise(totals.get(task)),
        }
    return out

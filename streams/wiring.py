"""What ``create_app`` built, in one place: for the agents, the views, tests and the benchmark."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from services.catalog import Catalog
from services.contracts import DeadLetter, Event

from .alerts import DeliveryLog, WebhookNotifier
from .batchwrites import BatchWrites
from .drift import MonitorResult, TaskMonitor
from .fastpaths import FastPaths
from .fastpaths.outbox import Outbox
from .join import CallFeedbackJoin
from .metrics import StreamMetrics
from .replayguard import ReplayGuard
from .settings import StreamsSettings

log = logging.getLogger(__name__)


@dataclass
class Wiring:
    """Handles on what ``create_app`` built (``app.switchyard``).

    ``tables`` by role: join, window, totals, detectors, alerts, input_drift, deliveries;
    ``topics`` by role: calls_and_feedback, outcomes, alerts, hard_queries, retrain, deadletter,
    features, task_outcomes."""

    settings: StreamsSettings
    prefix: str
    catalog: Catalog
    metrics: StreamMetrics
    joiner: CallFeedbackJoin
    monitor: TaskMonitor
    tables: dict[str, Any] = field(default_factory=dict)
    topics: dict[str, Any] = field(default_factory=dict)
    notifier: WebhookNotifier | None = None
    delivery: DeliveryLog | None = None
    join_writes: BatchWrites | None = None
    outbox: Outbox | None = None
    fast: FastPaths | None = None
    cheap_tier: str | None = None
    replay_guard: ReplayGuard | None = None  # what the join published before an assignment
    warm: bool = False  # evidently imported (the worker's warm-up task finished)
    join_inputs: int = 0  # calls and feedback records the join has processed

    async def dead_letter(
        self, event: Any, error: Exception, consumer: str, value: bytes | None = None
    ) -> None:
        """Send a record that failed its contract to the dead-letter topic, count it, log it."""
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
        await self.topics["deadletter"].send(value=record.to_bytes())
        self.metrics.dead_letters.labels(topic=msg.topic).inc()
        log.warning("dead-lettered %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, error)

    async def publish(self, res: MonitorResult) -> None:
        """Publish what a monitor batch caused: its reports, alerts and retrain requests."""
        if res.reports:  # evidently is CPU-bound: keep the event loop free while reports are written
            await asyncio.to_thread(res.write_reports)
        for alert in res.alerts:
            await self.topics["alerts"].send(key=alert.task.encode(), value=alert.to_bytes())
            self.metrics.alerts.labels(detector=alert.detector, status=alert.status.value).inc()
            log.warning("alert %s %s: %s", alert.status.value, alert.alert_id, alert.summary)
        for req in res.retrain:
            await self.topics["retrain"].send(value=req.to_bytes())
            self.metrics.retrain.inc()

    async def send_keyed(self, role: str, key: str, event: Event) -> None:
        """Send ``event`` keyed by ``key`` to the topic of ``role`` through Faust."""
        await self.topics[role].send(key=key.encode(), value=event.to_bytes())

    def on_sent(self, fut: asyncio.Future) -> None:
        """Done callback of produced batches: log and count a failed one."""
        if not fut.cancelled() and fut.exception() is not None:
            self.metrics.errors.labels(stage="produce").inc()
            log.error("a batch of records was not produced: %r", fut.exception())

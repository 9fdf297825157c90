"""The Faust app: ``create_app(settings, kafka)`` is the worker's composition root.

It declares the topics and tables, builds the join, the monitor and the on-call notifier, runs
the fast paths' start-up checks (:mod:`streams.fastpaths`), keeps handles on all of it in a
:class:`~streams.wiring.Wiring` (``app.switchyard``) and registers the agents, by domain
(:mod:`streams.agents`), and the views (:mod:`streams.views`):

* **join** (``switchyard.calls.v1`` + ``switchyard.feedback.v1``, keyed by request_id): the
  call/feedback join table, outcomes to ``switchyard.outcomes.v1``, hard-query mining of calls,
  router features per task to an internal topic;
* **monitor** (the join's outcomes again, one record per task and batch on an internal topic
  keyed by task): per-task tumbling-window and all-time tables, quality/calibration detectors,
  alerts and retrain requests;
* **input-drift** (the internal features topic, keyed by task): evidently data-drift checks;
* **oncall** (``switchyard.alerts.v1``): delivery to the on-call webhook, de-duplicated.

Values are consumed as raw bytes and validated with the pydantic contracts; a record that fails
goes to the dead-letter topic, is counted, and the agent goes on. Nothing runs at import.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from services.catalog import Catalog, load_catalog
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
    call_features_topic,
    task_outcomes_topic,
    topic_name,
)

from . import views
from .agents import input_drift, join, monitor, oncall
from .alerts import DeliveryLog, WebhookNotifier
from .batchwrites import BatchWrites
from .drift import TaskMonitor
from .fastpaths import FastPaths
from .fastpaths.current_event import bind
from .fastpaths.outbox import Outbox
from .fastpaths.quiet_monitor import RecordQuietMonitor
from .idempotence import batch_ids, outcome_ids
from .join import CallFeedbackJoin
from .metrics import StreamMetrics
from .replayguard import ReplayGuard
from .settings import StreamsSettings
from .wiring import Wiring

log = logging.getLogger(__name__)


def _wall_clock(event: Any = None) -> float:
    return time.time()


def create_app(settings: StreamsSettings, kafka: KafkaSettings, catalog: Catalog | None = None) -> faust.App:
    """Build the Faust app (not started). ``app.switchyard`` holds the :class:`Wiring`."""
    catalog = catalog or load_catalog(settings.catalog_path)
    tiers = {m.id: m.tier for m in catalog.models}
    prefix = kafka.topic_prefix
    settings.faust_dir.mkdir(parents=True, exist_ok=True)
    fast = FastPaths.detect(drain=settings.fast_drain, quiet=not settings.faust_monitor)
    if fast.fastdrain:
        log.info("fast record delivery on (streams/fastpaths/fastdrain.py)")
    brokers = [f"kafka://{h.strip()}" for h in kafka.bootstrap.split(",") if h.strip()]
    app = faust.App(
        settings.app_id,
        broker=brokers,
        broker_client_id=kafka.client_id,
        broker_credentials=kafka.faust_credentials(),
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
        **({"Monitor": RecordQuietMonitor} if fast.quiet_monitor else {}),
    )

    # -- topics ---------------------------------------------------------------------------
    def raw_topic(spec: TopicSpec, internal: bool = False) -> faust.TopicT:
        return app.topic(
            topic_name(spec, prefix),
            key_serializer="raw",
            value_serializer="raw",
            partitions=spec.partitions,
            **({"internal": True} if internal else {}),
        )

    features = call_features_topic(settings.app_id, settings.replication)
    task_outcomes_spec = task_outcomes_topic(settings.app_id, settings.replication)
    topics = {
        "calls_and_feedback": app.topic(
            topic_name(CALLS, prefix),
            topic_name(FEEDBACK, prefix),
            key_serializer="raw",
            value_serializer="raw",
        ),
        "outcomes": raw_topic(OUTCOMES),
        "alerts": raw_topic(ALERTS),
        "hard_queries": raw_topic(HARD_QUERIES),
        "retrain": raw_topic(RETRAIN),
        "deadletter": raw_topic(DEADLETTER),
        "features": app.topic(
            topic_name(features, prefix),
            internal=True,
            schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
            partitions=features.partitions,
        ),
        # The join's outcomes again, one record per task and batch (a JSON array of the outcome
        # records it publishes on switchyard.outcomes.v1), keyed by task: what the monitor consumes.
        # Same partitioning and order per task as the public topic, ~1/20 of the records to consume.
        "task_outcomes": raw_topic(task_outcomes_spec, internal=True),
    }

    # -- tables (changelog-backed, recovered after a restart or rebalance) -----------------
    schema = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")

    def table(name: str, partitions: int = OUTCOMES.partitions) -> Any:
        return app.Table(name, default=None, partitions=partitions, schema=schema)

    window = app.Table("task-window", default=dict, partitions=OUTCOMES.partitions, schema=schema)
    tables = {
        "join": table("join", CALLS.partitions),
        # Windows follow the worker's wall clock (the same in agents and in the /stats/ view).
        "window": window.tumbling(settings.window_s, expires=settings.window_expires_s).relative_to(
            _wall_clock
        ),
        "totals": table("task-totals"),
        "detectors": table("detectors"),
        "alerts": table("alert-state"),
        "input_drift": table("input-drift"),
        "deliveries": table("alert-deliveries", ALERTS.partitions),
    }
    join_table = tables["join"]

    def _delete_join_entry(key: str, entry: dict[str, Any]) -> None:
        # Called from a timer (no current event): tombstone the key in its own changelog partition.
        join_table.data.pop(key, None)
        if entry.get("p") is not None:
            join_table.send_changelog(entry["p"], key, None, value_serializer="raw")

    # -- domain objects -------------------------------------------------------------------
    join_writes = BatchWrites(join_table, bind if fast.bind else None)
    joiner = CallFeedbackJoin(
        join_writes, settings.join_ttl_s, tiers, settings.accept_threshold, on_delete=_delete_join_entry
    )
    task_monitor = TaskMonitor(
        settings,
        tables["detectors"],
        tables["alerts"],
        settings.load_reference(),
        defer_reports=True,
        input_store=tables["input_drift"],
        cheap_tier=catalog.tiers[0] if catalog.tiers else None,
    )
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
        StreamMetrics(),
        joiner,
        task_monitor,
        tables=tables,
        topics=topics,
        notifier=notifier,
        delivery=DeliveryLog(tables["deliveries"]),
        join_writes=join_writes,
        fast=fast,
        cheap_tier=catalog.tiers[0] if catalog.tiers else None,
    )
    wiring.outbox = Outbox(wiring.on_sent, bulk=fast.outbox)
    if settings.replay_guard:
        guard = wiring.replay_guard = ReplayGuard(
            kafka.bootstrap,
            {
                topics["outcomes"].get_topic_name(): (OUTCOMES.partitions, outcome_ids),
                topics["task_outcomes"].get_topic_name(): (task_outcomes_spec.partitions, batch_ids),
            },
            lookback_s=settings.replay_lookback_s,
            client_options=kafka.client_options(),
        )

        @app.on_partitions_assigned.connect
        async def _replay_again(*args: Any, **kwargs: Any) -> None:
            guard.reset()  # the next records of each input partition are a replay

    app.switchyard = wiring  # type: ignore[attr-defined]

    # -- agents, timers, views ------------------------------------------------------------
    for domain in (join, monitor, input_drift, oncall, views):
        domain.register(app, wiring)
    return app

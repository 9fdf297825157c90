"""Topic definitions: the one place that names topics and says how they are kept."""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import (
    AlertEvent,
    CallEvent,
    ContractError,
    DeadLetter,
    Event,
    FeedbackEvent,
    HardQueryEvent,
    OutcomeEvent,
    RetrainRequest,
)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic: its name, what keys it, the event model of its values and its configuration."""

    name: str
    key: str | None
    model: type[Event]
    partitions: int
    replication: int = 3
    retention_ms: int = 7 * DAY_MS
    cleanup_policy: str = "delete"
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        cfg = {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
        }
        cfg.update(self.extra)
        return cfg


CALLS = TopicSpec("switchyard.calls.v1", "request_id", CallEvent, partitions=6)
FEEDBACK = TopicSpec("switchyard.feedback.v1", "request_id", FeedbackEvent, partitions=6)
OUTCOMES = TopicSpec("switchyard.outcomes.v1", "task", OutcomeEvent, partitions=6, retention_ms=30 * DAY_MS)
ALERTS = TopicSpec("switchyard.alerts.v1", "task", AlertEvent, partitions=1, retention_ms=90 * DAY_MS)
HARD_QUERIES = TopicSpec(
    "switchyard.hard-queries.v1", "task", HardQueryEvent, partitions=3, retention_ms=30 * DAY_MS
)
RETRAIN = TopicSpec("switchyard.retrain.v1", None, RetrainRequest, partitions=1, retention_ms=30 * DAY_MS)
DEADLETTER = TopicSpec("switchyard.deadletter.v1", None, DeadLetter, partitions=1, retention_ms=30 * DAY_MS)

TOPICS: tuple[TopicSpec, ...] = (CALLS, FEEDBACK, OUTCOMES, ALERTS, HARD_QUERIES, RETRAIN, DEADLETTER)
BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}

# The streams worker's own topics, named after its app id (each worker group has its own): the
# join's router features per task and batch, and the join's outcomes again as one record per task
# and batch (a JSON array of the records on switchyard.outcomes.v1). Keyed by task, partitioned
# as the outcomes, kept as long: what the consuming agent has not read yet survives as long.
CALL_FEATURES_SUFFIX = "-call-features"
TASK_OUTCOMES_SUFFIX = "-task-outcomes"


def call_features_topic(app_id: str, replication: int = 3) -> TopicSpec:
    """``<app_id>-call-features``: router features of a batch of calls of one task (by column)."""
    return TopicSpec(
        f"{app_id}{CALL_FEATURES_SUFFIX}",
        "task",
        Event,  # no contract of its own: ``{"n": rows, "columns": {column: [values]}}``
        partitions=OUTCOMES.partitions,
        replication=replication,
        retention_ms=OUTCOMES.retention_ms,
    )


def task_outcomes_topic(app_id: str, replication: int = 3) -> TopicSpec:
    """``<app_id>-task-outcomes``: a JSON array of one task's outcomes of a join batch, in order."""
    return TopicSpec(
        f"{app_id}{TASK_OUTCOMES_SUFFIX}",
        "task",
        OutcomeEvent,
        partitions=OUTCOMES.partitions,
        replication=replication,
        retention_ms=OUTCOMES.retention_ms,
    )


def streams_internal_topics(app_id: str, replication: int = 3) -> tuple[TopicSpec, ...]:
    """The streams worker's internal topics (its agents consume them), for ``apply_topics``."""
    return (call_features_topic(app_id, replication), task_outcomes_topic(app_id, replication))


def topic_name(spec: TopicSpec, prefix: str = "") -> str:
    """The topic's name as deployed (tests and tenants may add a prefix)."""
    return f"{prefix}{spec.name}"


def decode(topic: str, raw: bytes | str, prefix: str = "") -> Event:
    """Validate a raw record of ``topic`` into its event model, or raise :class:`ContractError`."""
    base = topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic
    spec = BY_NAME.get(base)
    if spec is None:
        raise ContractError(f"unknown topic {topic!r}")
    return spec.model.from_bytes(raw)


def json_schemas() -> dict[str, dict]:
    """JSON Schema of each topic's value, by topic name."""
    return {t.name: t.model.model_json_schema() for t in TOPICS}

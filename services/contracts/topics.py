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

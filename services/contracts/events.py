"""Pydantic models of every Kafka event (DESIGN.md "Events").

Each record carries ``schema_version``; a record with another version or a broken shape fails
validation with a :class:`ContractError` naming the topic and the offending fields, so stream
agents can dead-letter it and go on.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def prompt_hash(text: str, key: bytes | None = None) -> str:
    """Stable hash of a prompt. With ``key`` (what events carry: the deployment's secret, see
    :class:`~services.contracts.settings.PrivacySettings`) an HMAC-SHA256, so a known prompt cannot
    be recovered by hashing a dictionary of candidates; without, a plain SHA-256 (identity of
    benchmark rows inside training: folds, caches)."""
    if key:
        return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ContractError(ValueError):
    """A record does not match its topic's contract."""


class Event(BaseModel):
    """Base of every event: strict about unknown fields, versioned, JSON round-trippable."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")

    schema_version: Literal[1] = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Any:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ContractError(f"invalid {cls.__name__}: {_summarise(exc)}") from exc


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "<record>"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class RoutingMode(StrEnum):
    ROUTE = "route"
    CASCADE = "cascade"
    HYBRID = "hybrid"
    PASSTHROUGH = "passthrough"
    EXPLORE = "explore"  # a budgeted shadow call to a cheaper model (``CallEvent.shadow_of`` set)


class CallStatus(StrEnum):
    OK = "ok"
    ERROR = "error"


class Attempt(BaseModel):
    """One upstream attempt of a call: the fallback path is the list of these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    provider: str
    status: Literal["ok", "error", "rejected", "skipped"]
    latency_ms: NonNegative = 0.0
    cost_usd: NonNegative = 0.0
    error: str | None = None
    http_status: int | None = None
    accepted_score: Probability | None = Field(
        default=None, description="Cascade scorer's confidence in this attempt's answer."
    )
    prompt_tokens: int = Field(
        default=0, ge=0, description="Tokens this attempt was priced for (0 when it failed before answering)."
    )
    completion_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(
        default=0, ge=0, description="Of prompt_tokens, those read from the upstream's prompt cache."
    )
    cache_write_tokens: int = Field(
        default=0, ge=0, description="Of prompt_tokens, those written to it (Anthropic cache creation)."
    )


def cache_usage(attempts: list[Attempt]) -> dict[str, int]:
    """``Usage`` cache fields of a call: the cached and cache-write tokens of its attempts that
    answered (ok, or rejected by a cascade), as its prompt tokens count them."""
    answered = [a for a in attempts if a.status in ("ok", "rejected")]
    return {
        "cached_tokens": sum(a.cached_tokens for a in answered),
        "cache_write_tokens": sum(a.cache_write_tokens for a in answered),
    }


class Usage(BaseModel):
    """Tokens of a call; ``prompt_tokens`` includes the cached ones (OpenAI's convention)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0, description="Of prompt_tokens, read from prompt caches.")
    cache_write_tokens: int = Field(default=0, ge=0, description="Of prompt_tokens, written to them.")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class CallEvent(Event):
    """``switchyard.calls.v1``, key ``request_id``: one routed (or passed-through) call."""

    request_id: str = Field(min_length=1, description="Server-issued; callers cannot set it.")
    client_request_id: str | None = Field(
        default=None, max_length=128, description="The caller's own id (X-Client-Request-Id), if sent."
    )
    ts: datetime = Field(default_factory=utcnow)
    task: str = "default"
    tenant: str = Field(default="default", description="The API key's id: server-side identity.")
    client_tenant: str | None = Field(
        default=None, max_length=128, description="The caller's own tenant label (knob), not identity."
    )
    prompt_hash: str = Field(min_length=16)
    prompt: str | None = Field(default=None, description="None when redaction is on.")
    requested_model: str
    mode: RoutingMode
    router_version: str | None = None
    router_fallback: bool = Field(
        default=False, description="No learned score in time: per-task priors or the catalog default chose."
    )
    route_source: str | None = Field(
        default=None,
        description="Where a routed request's model came from: router, cheap (the in-ingress cheap "
        "router), prior (the task's learned decision mix) or default (the catalog default); None for "
        "pass-through.",
    )
    scores: dict[str, Probability] = Field(default_factory=dict)
    quality_target: Probability | None = None
    threshold: float | None = None
    chosen_model: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    escalated: bool = False
    stream: bool = False
    usage: Usage = Field(default_factory=Usage)
    cost_usd: NonNegative = 0.0
    latency_ms: NonNegative = 0.0
    status: CallStatus = CallStatus.OK
    error: str | None = None
    shadow_of: str | None = Field(
        default=None,
        description="Mode explore: the client's call this shadow call repeated on a cheaper model "
        "(off the client's path; its answer went to the judge, not to the client).",
    )
    cache_hit: bool = Field(
        default=False,
        description="Answered from the gateway's semantic cache: no upstream call (attempts empty, "
        "cost 0); chosen_model is the model that wrote the stored answer.",
    )
    cache_similarity: float | None = Field(
        default=None, ge=-1, le=1, description="A hit's cosine similarity to the stored query (1: exact)."
    )
    cache_source_request_id: str | None = Field(
        default=None, description="A hit's source: the call whose answer was served."
    )
    cache_saved_usd: NonNegative | None = Field(
        default=None, description="A hit's saving: what its source call cost upstream."
    )

    @property
    def fallback_path(self) -> list[str]:
        return [a.model for a in self.attempts]


class FeedbackSource(StrEnum):
    USER = "user"
    JUDGE = "judge"
    RULE = "rule"
    EXPLORE = "explore"  # the judge's grade of a budgeted shadow call (gateway exploration)


class FeedbackEvent(Event):
    """``switchyard.feedback.v1``, key ``request_id``: one quality signal for a call."""

    feedback_id: str = Field(default_factory=new_id)
    request_id: str = Field(min_length=1)
    ts: datetime = Field(default_factory=utcnow)
    score: Probability | None = None
    label: Literal["good", "bad"] | None = None
    source: FeedbackSource = FeedbackSource.USER
    comment: str | None = Field(default=None, max_length=2000)
    tenant: str | None = Field(
        default=None, description="Who gave it: the API key's id (server-side), None from older gateways."
    )

    @model_validator(mode="after")
    def _score_or_label(self) -> FeedbackEvent:
        if self.score is None and self.label is None:
            raise ValueError("feedback needs a score (0..1) or a label ('good'|'bad')")
        return self

    @property
    def value(self) -> float:
        """The signal as a number in [0, 1] (a label counts as 1 or 0)."""
        if self.score is not None:
            return self.score
        return 1.0 if self.label == "good" else 0.0


class OutcomeEvent(Event):
    """``switchyard.outcomes.v1``, key ``task``: a call joined with its quality signal."""

    request_id: str = Field(min_length=1)
    ts: datetime = Field(default_factory=utcnow)
    task: str
    tenant: str = "default"
    prompt_hash: str
    prompt: str | None = None
    chosen_model: str
    tier: str | None = None
    mode: RoutingMode
    router_version: str | None = None
    predicted: Probability | None = Field(default=None, description="Router score of chosen_model.")
    score: Probability
    accepted: bool
    escalated: bool = False
    cost_usd: NonNegative = 0.0
    latency_ms: NonNegative = 0.0
    feedback_source: FeedbackSource = FeedbackSource.USER
    shadow_of: str | None = Field(
        default=None, description="Mode explore: the client's call the shadow call repeated."
    )
    cache_hit: bool = Field(default=False, description="The call was answered from the semantic cache.")
    cache_similarity: float | None = Field(default=None, description="A hit's similarity (1: exact).")


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertEvent(Event):
    """``switchyard.alerts.v1``, key ``task``: a drift or quality alert, firing or resolved."""

    alert_id: str = Field(min_length=1, description="Stable fingerprint: (task, detector).")
    status: AlertStatus
    ts: datetime = Field(default_factory=utcnow)
    task: str
    detector: str
    severity: Literal["info", "warning", "critical"] = "warning"
    summary: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    window_start: datetime | None = None
    window_end: datetime | None = None
    suggested_action: str | None = None
    report_url: str | None = None


class HardQueryReason(StrEnum):
    ESCALATED = "escalated"
    LOW_MARGIN = "low_margin"
    NEGATIVE_FEEDBACK = "negative_feedback"


class HardQueryEvent(Event):
    """``switchyard.hard-queries.v1``, key ``task``: a query the router got wrong or was unsure of."""

    request_id: str = Field(min_length=1)
    ts: datetime = Field(default_factory=utcnow)
    task: str
    prompt_hash: str
    prompt: str | None = None
    reason: HardQueryReason
    chosen_model: str | None = None
    scores: dict[str, Probability] = Field(default_factory=dict)
    feedback_score: Probability | None = None
    router_version: str | None = None


class RetrainRequest(Event):
    """``switchyard.retrain.v1`` (no key): a request to retrain the router."""

    retrain_id: str = Field(default_factory=new_id)
    ts: datetime = Field(default_factory=utcnow)
    reason: str = Field(min_length=1)
    source: Literal["streams", "operator", "schedule"] = "operator"
    tasks: list[str] = Field(default_factory=list)
    window_start: datetime | None = None
    window_end: datetime | None = None
    alert_id: str | None = None

    @model_validator(mode="after")
    def _window_order(self) -> RetrainRequest:
        if self.window_start and self.window_end and self.window_start > self.window_end:
            raise ValueError("window_start must not be after window_end")
        return self


class DeadLetter(Event):
    """``switchyard.deadletter.v1``: a record a consumer could not process, kept for inspection."""

    ts: datetime = Field(default_factory=utcnow)
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    value: str = Field(description="The raw value, decoded as UTF-8 with replacement.")
    error: str
    consumer: str

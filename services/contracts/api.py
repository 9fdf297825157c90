"""HTTP API shapes of the gateway (OpenAI-compatible plus Switchyard's knobs and feedback).

The chat request accepts any further OpenAI parameter (``extra="allow"``) and passes it upstream;
what Switchyard itself reads is validated here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .events import FeedbackSource, RoutingMode

ROUTING_MODES = ("route", "cascade", "hybrid")


class ChatMessage(BaseModel):
    """One message; ``content`` is text or a list of OpenAI content parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class SwitchyardKnobs(BaseModel):
    """Per-request routing knobs (``extra_body.switchyard`` or ``X-Switchyard-*`` headers)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(default=None, min_length=1, max_length=128)
    quality_target: float | None = Field(default=None, ge=0.0, le=1.0)
    mode: Literal["route", "cascade", "hybrid"] | None = None
    max_cost_usd: float | None = Field(default=None, ge=0.0)
    tenant: str | None = Field(default=None, min_length=1, max_length=128)

    def merged(self, other: SwitchyardKnobs) -> SwitchyardKnobs:
        """These knobs with ``other``'s set values on top."""
        return self.model_copy(update=other.model_dump(exclude_none=True))


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; unknown OpenAI params pass through."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    switchyard: SwitchyardKnobs = Field(default_factory=SwitchyardKnobs)

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in v):
            raise ValueError("messages must contain at least one user message")
        return v

    def upstream_payload(self) -> dict[str, Any]:
        """The body sent upstream: everything but Switchyard's own fields and ``model``."""
        body = self.model_dump(exclude={"switchyard", "model", "stream"}, exclude_none=True)
        body.pop("stream_options", None)
        return body

    def last_user_text(self, max_chars: int = 4000) -> str:
        """The last user turn's text (bounded): what the router sees."""
        for m in reversed(self.messages):
            if m.role == "user":
                if isinstance(m.content, str):
                    return m.content[-max_chars:]
                if isinstance(m.content, list):
                    return "".join(p.get("text", "") for p in m.content if isinstance(p, dict))[-max_chars:]
        return ""


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a quality signal for a call."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    label: Literal["good", "bad"] | None = None
    source: FeedbackSource = FeedbackSource.USER
    comment: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _score_or_label(self) -> FeedbackRequest:
        if self.score is None and self.label is None:
            raise ValueError("feedback needs a score (0..1) or a label ('good'|'bad')")
        if self.source is FeedbackSource.EXPLORE:
            raise ValueError(
                "source 'explore' is the gateway's own (exploration grades); use user, judge or rule"
            )
        return self


class FeedbackResponse(BaseModel):
    request_id: str
    feedback_id: str
    accepted: bool = True


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models`` (OpenAI shape plus tier and routing flag)."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    tier: str | None = None
    routing: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    """The OpenAI error body every error response uses."""

    error: ErrorDetail


__all__ = [
    "ROUTING_MODES",
    "ChatCompletionRequest",
    "ChatMessage",
    "ErrorBody",
    "ErrorDetail",
    "FeedbackRequest",
    "FeedbackResponse",
    "ModelCard",
    "ModelList",
    "RoutingMode",
    "SwitchyardKnobs",
]

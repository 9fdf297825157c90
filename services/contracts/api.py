"""HTTP API shapes of the gateway (OpenAI-compatible plus Switchyard's knobs and feedback).

The chat request accepts any further OpenAI parameter (``extra="allow"``) and passes it upstream;
what Switchyard itself reads is validated here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .events import FeedbackSource, RoutingMode

ROUTING_MODES = ("route", "cascade", "hybrid")


def _finite(lo: float, hi: float) -> Any:
    """A JSON number in [lo, hi]: no NaN or infinity, no string ("hot" is a 400, as OpenAI says)."""
    return Annotated[float, Field(ge=lo, le=hi, allow_inf_nan=False, strict=True)]


class ChatMessage(BaseModel):
    """One message; ``content`` is text or a list of OpenAI content parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_call_id: Annotated[str, Field(min_length=1)] | None = None
    tool_calls: list[dict[str, Any]] | None = None

    @field_validator("tool_calls")
    @classmethod
    def _calls(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, call in enumerate(v or []):
            fn = call.get("function")
            if not isinstance(call.get("id"), str) or not isinstance(fn, dict):
                raise ValueError(f"tool call {i} needs a string 'id' and a 'function' object")
            if not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments", ""), str):
                raise ValueError(f"tool call {i} needs a string 'function.name' and 'function.arguments'")
        return v

    @model_validator(mode="after")
    def _tool_result_names_its_call(self) -> ChatMessage:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a message with role 'tool' needs the 'tool_call_id' it answers")
        return self

    @field_validator("content")
    @classmethod
    def _parts(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(v, list):
            for i, part in enumerate(v):
                kind = part.get("type")
                if not isinstance(kind, str):
                    raise ValueError(f"content part {i} needs a string 'type'")
                if kind == "text" and not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {i} of type 'text' needs a string 'text'")
        return v


class StreamOptions(BaseModel):
    """``stream_options``: OpenAI's object (``null`` means absent, as in OpenAI's schema)."""

    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool = False


class SwitchyardKnobs(BaseModel):
    """Per-request routing knobs (``extra_body.switchyard`` or ``X-Switchyard-*`` headers)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(default=None, min_length=1, max_length=128)
    quality_target: float | None = Field(default=None, ge=0.0, le=1.0)
    mode: Literal["route", "cascade", "hybrid"] | None = None
    max_cost_usd: float | None = Field(default=None, ge=0.0)
    tenant: str | None = Field(default=None, min_length=1, max_length=128)
    # False: neither served from nor stored in the semantic cache (header X-Switchyard-Cache: off)
    cache: bool | None = None

    def merged(self, other: SwitchyardKnobs) -> SwitchyardKnobs:
        """These knobs with ``other``'s set values on top."""
        return self.model_copy(update=other.model_dump(exclude_none=True))


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; unknown OpenAI params pass through."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    switchyard: SwitchyardKnobs = Field(default_factory=SwitchyardKnobs)
    # the standard parameters, typed and ranged as OpenAI documents them: a wrong type or range is
    # a 400 here, never a 500 later or an upstream 4xx that looks like the upstream's fault
    temperature: _finite(0.0, 2.0) | None = None
    top_p: _finite(0.0, 1.0) | None = None
    presence_penalty: _finite(-2.0, 2.0) | None = None
    frequency_penalty: _finite(-2.0, 2.0) | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    seed: StrictInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    stop: Annotated[str, Field(max_length=1000)] | Annotated[list[str], Field(max_length=4)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(v or []):
            if not isinstance(tool.get("type"), str):
                raise ValueError(f"tool {i} needs a string 'type'")
            fn = tool.get("function")
            if tool["type"] == "function" and not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
                raise ValueError(
                    f"tool {i} of type 'function' needs a 'function' object with a string 'name'"
                )
        return v

    @field_validator("response_format")
    @classmethod
    def _format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            if v.get("type") not in ("text", "json_object", "json_schema"):
                raise ValueError("response_format.type must be 'text', 'json_object' or 'json_schema'")
            if v["type"] == "json_schema" and not isinstance(v.get("json_schema"), dict):
                raise ValueError("a 'json_schema' response_format needs a 'json_schema' object")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_needs_tools(cls, v: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools")
        if v not in (None, "none") and not tools:
            raise ValueError("tool_choice is only allowed when tools are specified")
        if isinstance(v, dict) and v.get("type") == "function":
            name = (v.get("function") or {}).get("name")
            if name not in {(t.get("function") or {}).get("name") for t in tools or []}:
                raise ValueError(f"tool_choice names the function {name!r}, which is not among the tools")
        return v

    @property
    def include_usage(self) -> bool:
        """``stream_options.include_usage``."""
        return bool(self.stream_options and self.stream_options.include_usage)

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in v):
            raise ValueError("messages must contain at least one user message")
        return v

    def upstream_payload(self) -> dict[str, Any]:
        """The body sent upstream: everything but Switchyard's own fields and ``model``."""
        return self.model_dump(exclude={"switchyard", "model", "stream", "stream_options"}, exclude_none=True)

    def token_estimate(self) -> int:
        """What the request needs of a context window, estimated without a tokenizer: every
        message's text at 4 characters a token (OpenAI's rule of thumb) plus the completion it
        asks for (``max_completion_tokens`` or ``max_tokens``)."""
        chars = 0
        for m in self.messages:
            if isinstance(m.content, str):
                chars += len(m.content)
            elif isinstance(m.content, list):
                chars += sum(len(p.get("text") or "") for p in m.content if isinstance(p, dict))
        return chars // 4 + 4 * len(self.messages) + (self.max_completion_tokens or self.max_tokens or 0)

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

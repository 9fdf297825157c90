"""Shapes shared by the upstream adapters: what they take, what they give back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.catalog import Provider


@dataclass(frozen=True)
class Timeouts:
    """Connect, first-token and total timeouts in seconds for one upstream."""

    connect_s: float
    first_token_s: float
    total_s: float

    @classmethod
    def of(cls, provider: Provider) -> Timeouts:
        return cls(provider.timeout_connect_s, provider.timeout_first_token_s, provider.timeout_total_s)


@dataclass
class Completion:
    """A non-streamed answer in OpenAI ``chat.completion`` shape plus what accounting needs."""

    body: dict[str, Any]
    prompt_tokens: int  # all input tokens, cached ones included (OpenAI's convention)
    completion_tokens: int
    cached_tokens: int = 0  # of ``prompt_tokens``, read from the upstream's prompt cache
    cache_write_tokens: int = 0  # of ``prompt_tokens``, written to it (Anthropic cache creation)

    @property
    def content(self) -> str:
        try:
            return self.body["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError):
            return ""

    @property
    def answer_text(self) -> str:
        """What a scorer reads of the first choice: its text, then each tool call it makes as
        ``name(arguments)`` (a tool-calling answer has no text to judge otherwise)."""
        try:
            calls = self.body["choices"][0]["message"].get("tool_calls") or []
        except (KeyError, IndexError, TypeError):
            calls = []
        made = [
            f"{(c.get('function') or {}).get('name', '')}({(c.get('function') or {}).get('arguments', '')})"
            for c in calls
            if isinstance(c, dict)
        ]
        return "\n".join([self.content, *made]) if made else self.content


@dataclass
class StreamUsage:
    """Filled in while a stream runs: tokens (from the upstream when it reports them); the token
    convention of :class:`Completion`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    text: list[str] = field(default_factory=list)

    def fill_estimates(self, messages: list[dict[str, Any]]) -> None:
        """Estimate whatever token counts the upstream did not report."""
        if not self.prompt_tokens:
            self.prompt_tokens = estimate_tokens(prompt_text(messages))
        if not self.completion_tokens:
            self.completion_tokens = estimate_tokens("".join(self.text))


@dataclass(frozen=True)
class Unsupported:
    """A request parameter an upstream kind cannot honour, and why (a 400 naming ``param``, or
    for ``switchyard/auto`` a candidate left out)."""

    param: str
    reason: str


class ChatAdapter(Protocol):
    """An upstream API: one pooled HTTP client, OpenAI-shaped requests in and answers out."""

    name: str
    timeouts: Timeouts

    async def complete(self, payload: dict[str, Any], upstream_model: str) -> Completion: ...

    def stream(
        self, payload: dict[str, Any], upstream_model: str, usage: StreamUsage
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def has_cache_control(content: Any) -> bool:
    """Whether a message's content (a list of parts) marks a part with ``cache_control``."""
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("cache_control") for p in content)


def openai_cached_tokens(usage: dict[str, Any]) -> int:
    """``usage.prompt_tokens_details.cached_tokens`` of an OpenAI answer or usage chunk (0 when
    absent: an upstream without prompt caching). Part of ``prompt_tokens``, not added to it."""
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        return 0
    return int(details.get("cached_tokens") or 0)


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters a token) for upstreams that report no usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """All message text of a conversation, joined (for estimates and hashing)."""
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)

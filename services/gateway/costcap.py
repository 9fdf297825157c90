"""``max_cost_usd`` as a hard cap: the most the gateway may spend upstream on one request.

Before any call the prompt's size is bounded from above (3 characters a token, plus a few tokens a
message: more than any tokenizer we serve yields for text), so a model can be judged affordable
before it is called. Each call then gets a completion limit (``max_tokens``, or
``max_completion_tokens`` when the request used it) such that prompt + completion at that model's
prices stay within what is left of the cap; a model whose prompt alone leaves room for fewer than
:data:`MIN_COMPLETION_TOKENS` is not called. A cascade spends the cap across its rungs: a rung that
no longer fits is not tried, and the answer so far is served. Nothing fits at all → a 400 naming
``max_cost_usd`` and the cheapest candidate's least cost. The cost reported (``x-switchyard-cost-
usd``, the call event) is the real one, from the upstream's token counts. The cap takes no
prompt-cache discount (a cache read is never certain); a request that marks ``cache_control`` parts
may make an Anthropic upstream write its prompt to the cache, so its prompt is bounded at the
dearer of ``input`` and ``cache_write``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from services.catalog import Catalog
from services.contracts.api import ChatCompletionRequest
from services.providers.base import has_cache_control

MIN_COMPLETION_TOKENS = 16
CHARS_PER_TOKEN_BOUND = 3
TOKENS_PER_MESSAGE = 8


def prompt_tokens_bound(request: ChatCompletionRequest) -> int:
    """An upper bound on the prompt's tokens, for the cap (not for billing)."""
    chars = 0
    for m in request.messages:
        if isinstance(m.content, str):
            chars += len(m.content)
        elif isinstance(m.content, list):
            chars += sum(len(str(p.get("text") or "")) for p in m.content if isinstance(p, dict))
        calls = getattr(m, "tool_calls", None)
        if calls:
            chars += len(str(calls))
    if request.tools:
        chars += len(str(request.tools))
    return math.ceil(chars / CHARS_PER_TOKEN_BOUND) + TOKENS_PER_MESSAGE * len(request.messages)


def marks_cache(request: ChatCompletionRequest) -> bool:
    """Whether a content part of the request carries ``cache_control`` (asks for cache writes)."""
    return any(has_cache_control(m.content) for m in request.messages)


NO_LIMIT = 1 << 30  # completion tokens: more than any model writes


class CostCap:
    """The cap of one request and what is left of it; ``writes_cache``: the request marks
    ``cache_control`` parts (:func:`marks_cache`), so its prompt may be billed as a cache write."""

    def __init__(self, catalog: Catalog, cap_usd: float, prompt_tokens: int, writes_cache: bool = False):
        self.catalog = catalog
        self.cap_usd = cap_usd
        self.prompt_tokens = prompt_tokens
        self.writes_cache = writes_cache

    def _prompt_cost(self, model: str) -> float:
        price = self.catalog.model(model).price
        written = self.prompt_tokens if self.writes_cache and price.write_rate > price.input else 0
        return price.cost(self.prompt_tokens, 0, 0, written)

    def allowance(self, model: str, spent_usd: float = 0.0) -> int:
        """The most completion tokens ``model`` may produce with what is left (may be < 0)."""
        price = self.catalog.model(model).price
        left = self.cap_usd - spent_usd - self._prompt_cost(model)
        if price.output <= 0:
            return NO_LIMIT if left >= 0 else -1
        tokens = left * 1e6 / price.output
        # a cap near the top of the float range (1e308) leaves infinitely many tokens: no limit
        return math.floor(tokens) if math.isfinite(tokens) else NO_LIMIT

    def affordable(self, model: str, spent_usd: float = 0.0) -> bool:
        return self.allowance(model, spent_usd) >= MIN_COMPLETION_TOKENS

    def least_cost(self, model: str) -> float:
        return self._prompt_cost(model) + self.catalog.model(model).price.cost(0, MIN_COMPLETION_TOKENS)

    def limit(self, models: Iterable[str], spent_usd: float = 0.0) -> int:
        """The completion limit that keeps a call to any of ``models`` within the cap."""
        return min(self.allowance(m, spent_usd) for m in models)


def clamp(payload: dict, requested: ChatCompletionRequest, limit: int) -> dict:
    """``payload`` with its completion limit at most ``limit`` (a copy when it changes)."""
    key = "max_completion_tokens" if requested.max_completion_tokens is not None else "max_tokens"
    asked = payload.get(key)
    if asked is not None and asked <= limit:
        return payload
    return {**payload, key: limit}

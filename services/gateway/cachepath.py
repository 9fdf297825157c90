"""The semantic cache on one replica's request path (docs/cache.md): which requests it takes,
the lookups before and after routing (the router's own embedding, no second encoder pass), what a
hit puts in the call's context, which answers are offered, and what feedback does. The cache
itself is :mod:`services.gateway.semcache`; its fleet store :mod:`services.gateway.semcache_shared`."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.catalog import Catalog
from services.contracts.api import ChatCompletionRequest, SwitchyardKnobs
from services.contracts.events import RoutingMode

from .auth import Caller
from .degrade import RouteChain, RouteSource
from .metrics import GatewayMetrics
from .semcache import CacheHit, SemanticCache, cache_namespace
from .semcache_shared import SharedCacheStore

if TYPE_CHECKING:
    from .service import CallContext

log = logging.getLogger(__name__)


@dataclass
class CacheKey:
    """What the semantic cache matches a request on: its namespace (tenant, model, conversation
    before the last user turn, parameters), the last user turn's text, and, once routed, the
    router's embedding of it."""

    ns: str
    text: str
    vector: Any = None


class CachePath:
    """One replica's semantic cache on its request path; every method is a no-op without a cache."""

    def __init__(
        self,
        cache: SemanticCache | None,
        catalog: Catalog,
        metrics: GatewayMetrics,
        chain: RouteChain,
        *,
        store: SharedCacheStore | None = None,
        confirm_score: float = 0.8,
    ) -> None:
        self.cache = cache
        self.catalog = catalog
        self.metrics = metrics
        self.chain = chain  # its primary source's embeddings define the cache's space
        # the fleet's shared store: feedback may reach another replica than the call (semcache_shared.py)
        self.store = store
        self.confirm_score = confirm_score  # feedback at or above it admits an answer
        self._space: str | None = None  # the embedding space the cache's vectors live in

    def key(
        self, req: ChatCompletionRequest, knobs: SwitchyardKnobs, caller: Caller, payload: dict[str, Any]
    ) -> CacheKey | None:
        """The request's cache key, or None when the cache neither serves nor stores it: the cache
        is off, the caller opted out, or the request is one the cache does not take (more than one
        choice, or a last user turn with anything but text: an image is not in the key)."""
        if self.cache is None:
            return None
        why = None
        if knobs.cache is False:
            why = "opted out"
        elif not self.cache.policy(knobs.task or "default").enabled:
            why = "off for the task"
        elif (req.n or 1) > 1:
            why = "n > 1"
        else:
            last = next((m for m in reversed(req.messages) if m.role == "user"), None)
            if last is None or not (
                isinstance(last.content, str)
                or (
                    isinstance(last.content, list)
                    and all(isinstance(p, dict) and p.get("type") == "text" for p in last.content)
                )
            ):
                why = "not a text question"
        if why is not None:
            task = self.metrics.task_label(knobs.task or "default")
            self.metrics.cache_lookups.labels(task=task, result="bypass").inc()
            return None
        text = req.last_user_text(max_chars=1 << 30)  # the whole turn: a truncated one could collide
        return CacheKey(cache_namespace(caller.tenant, req.model, payload), text)

    def lookup(self, ctx: CallContext, routed: bool) -> bool:
        """Look the request up (before routing: exact repeats only; after: with the router's
        embedding too); on a hit, the context takes the stored answer's model and usage."""
        key = ctx.cache_key
        if key is None or self.cache is None:
            return False
        task = self.metrics.task_label(ctx.task)
        if routed:
            key.vector = self.vector(ctx)
            if key.vector is None:  # nothing new to match on: the exact lookup has been done
                self.metrics.cache_lookups.labels(task=task, result="miss").inc()
                return False
        hit = self.cache.lookup(key.ns, ctx.task, key.text, key.vector, request_id=ctx.request_id)
        if hit is not None and hit.answer["model"] in ctx.incapable:
            hit = None  # written by a model this call may not use (the key's allowlist)
        if hit is None:
            if routed or ctx.mode is RoutingMode.PASSTHROUGH:  # the last lookup this request gets
                self.metrics.cache_lookups.labels(task=task, result="miss").inc()
            return False
        ctx.cache_hit = hit
        ctx.model = hit.answer["model"]
        ctx.prompt_tokens = int(hit.answer.get("prompt_tokens") or 0)
        ctx.completion_tokens = int(hit.answer.get("completion_tokens") or 0)
        result = "hit_exact" if hit.exact else "hit_semantic"
        self.metrics.cache_lookups.labels(task=task, result=result).inc()
        return True

    def vector(self, ctx: CallContext) -> Any:
        """The router's embedding of the query, when it is in the space the cache holds: vectors of
        the primary routing source define the space (a new encoder there starts a new space, and
        the old vectors are dropped); a fallback source's vectors of another space are not used."""
        import numpy as np

        r = ctx.route
        if r is None or r.embedding is None or r.embedding_space is None:
            return None
        if r.embedding_space != self._space:
            primary = RouteSource.CHEAP if self.chain.local_is_primary else RouteSource.ROUTER
            if self._space is not None and ctx.route_source is not primary:
                return None
            if self._space is not None:
                log.info("semantic cache: router embedding space changed; dropping stored vectors")
                assert self.cache is not None
                self.cache.clear()
            self._space = r.embedding_space
        return np.frombuffer(r.embedding, dtype=np.float32)

    def body(self, ctx: CallContext) -> dict[str, Any]:
        """The hit's stored answer as this request's completion (its own id and time)."""
        assert ctx.cache_hit is not None
        body = copy.deepcopy(ctx.cache_hit.answer["body"])
        body["created"] = int(time.time())
        return body

    def offer(self, ctx: CallContext, body: dict[str, Any]) -> None:
        """Offer a fresh, complete text answer: a strong-tier one is stored at once, any other waits
        for a positive signal (feedback or a judge). Truncated answers and tool calls are not kept."""
        key = ctx.cache_key
        if key is None or self.cache is None or ctx.cache_hit is not None or ctx.model is None:
            return
        choices = body.get("choices") or []
        if len(choices) != 1 or choices[0].get("finish_reason") != "stop":
            return
        message = choices[0].get("message") or {}
        if message.get("tool_calls") or not isinstance(message.get("content"), str) or not message["content"]:
            return
        if ctx.route is not None and key.vector is None:
            key.vector = self.vector(ctx)
        entry = self.catalog.model(ctx.model)
        good = entry.tier == self.catalog.tiers[-1] or ctx.model == self.catalog.strong_model
        record = {
            "body": copy.deepcopy(body),
            "model": ctx.model,
            "prompt_tokens": ctx.prompt_tokens,
            "completion_tokens": ctx.completion_tokens,
            "cost_usd": ctx.cost_usd,
        }
        try:
            self.cache.offer(ctx.request_id, key.ns, ctx.task, key.text, key.vector, record, good=good)
        except Exception as exc:  # noqa: BLE001 - the cache never fails a call that was answered
            log.warning("request %s: not cached: %s: %s", ctx.request_id, type(exc).__name__, exc)

    def feedback(self, request_id: str, value: float) -> None:
        """A quality signal (``FeedbackEvent.value``) for ``request_id``: positive admits the call's
        pending answer; negative drops it (and, for a call served from the cache, the answer it was
        served) and keeps it out for good."""
        if self.cache is None:
            return
        target = self.store or self.cache
        if value >= self.confirm_score:
            target.confirm(request_id)
        elif value < 0.5:
            target.reject(request_id)


def saved_usd(hit: CacheHit | None) -> float | None:
    """What a hit did not spend: its source call's upstream cost."""
    return None if hit is None else float(hit.answer.get("cost_usd") or 0.0)


class Assembled:
    """A streamed answer put back together (choice 0's text and finish reason), so a streamed
    answer can be offered to the cache like a non-streamed one; anything else (more than one
    choice, tool calls) makes it one the cache does not keep."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.other = False

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if choice.get("index", 0) != 0 or delta.get("tool_calls"):
                self.other = True
            if isinstance(delta.get("content"), str):
                self.parts.append(delta["content"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def body(self, request_id: str, created: int, model: str | None) -> dict[str, Any]:
        finish = None if self.other else self.finish_reason
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": created or int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.parts)},
                    "finish_reason": finish,
                }
            ],
        }

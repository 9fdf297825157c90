"""The provider pool: one adapter per upstream, a breaker per upstream deployment, retries with
backoff and jitter honouring ``Retry-After``, and fallback along an ordered list of models.

A model sold by several providers (catalog ``offers``) is bought from the cheapest healthy offer
first and fails over along :mod:`.arbitrage`'s order before the next model is tried; with another
offer left, a failure fails over at once (the next seller is a retry that does not wait), the
last offer is retried as a single-offer model always was. Each attempt names the provider that
served it and is priced at that offer's price.

Streams fall back silently until their first token; after it, a failure surfaces as
:class:`MidStreamError` so the caller sends an SSE error event instead of a truncated success.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from services.catalog import Catalog, ModelEntry, Offer
from services.contracts.events import Attempt
from services.errors import (
    REQUEST_FAULT_STATUSES,
    AllUpstreamsFailed,
    CircuitOpen,
    UnknownModel,
    UpstreamError,
    UpstreamRejectedRequest,
)
from services.request_context import current_request_id

from .anthropic import AnthropicAdapter
from .arbitrage import ArbitragePolicy, LatencyBoard, order_offers
from .base import ChatAdapter, Completion, StreamUsage
from .breaker import BreakerPolicy, BreakerState, CircuitBreaker
from .openai import OpenAIAdapter

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between retries of one upstream; a Retry-After above ``max_retry_after_s`` is not
    waited for (the call falls back to the next model instead)."""

    initial_s: float = 0.05
    max_s: float = 2.0
    jitter_s: float = 0.05
    max_retry_after_s: float = 5.0


@dataclass(frozen=True)
class Served:
    """What answered a model call: the offer, its result, and when its first try started."""

    offer: Offer
    result: Any
    t0: float


class MidStreamError(UpstreamError):
    """A stream failed after its first token had been sent to the client."""


@dataclass
class StreamHandle:
    """An opened stream: the model that answers, its chunks, and its token usage when done."""

    model: str
    chunks: AsyncIterator[dict[str, Any]]
    usage: StreamUsage = field(default_factory=StreamUsage)
    upstream: Any = None

    async def aclose(self) -> None:
        """Release the upstream connection (call when the client goes away early)."""
        for gen in (self.chunks, self.upstream):
            if gen is not None:
                with contextlib.suppress(Exception):
                    await gen.aclose()


def counts_against_upstream(exc: UpstreamError) -> bool:
    """Whether a failure says the upstream is unhealthy (its breaker counts it): 5xx, 408,
    timeouts, transport errors and malformed answers do; a client 4xx (the request's own fault)
    and a 429 (rate limiting: the retry waits its ``Retry-After``) do not."""
    status = exc.http_status
    return status is None or status >= 500 or status == 408


def build_adapter(kind: str, provider: Any, max_connections: int, wire: str = "aiohttp") -> ChatAdapter:
    """The adapter for a catalog provider kind; ``wire``: ``aiohttp`` or ``httpx`` (httpcore)."""
    if kind == "anthropic":
        return AnthropicAdapter(provider, max_connections, wire=wire)
    return OpenAIAdapter(provider, max_connections, wire=wire)


class ProviderPool:
    """Calls catalog models through their upstreams with retries, breakers and fallbacks."""

    def __init__(
        self,
        catalog: Catalog,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        adapters: dict[str, ChatAdapter] | None = None,
        on_breaker_change: Callable[[str, BreakerState], None] | None = None,
        max_connections: int = 200,
        max_models: int = 4,
        clock: Callable[[], float] = time.monotonic,
        wire: str = "aiohttp",
        arbitrage: ArbitragePolicy | None = None,
    ):
        self.catalog = catalog
        self.arbitrage = arbitrage or ArbitragePolicy()
        self.latency = LatencyBoard(self.arbitrage.latency_alpha, self.arbitrage.latency_ttl_s, clock)
        self.retry = retry or RetryPolicy()
        self._breaker_policy = breaker or BreakerPolicy()
        self._on_breaker_change = on_breaker_change
        self._clock = clock
        self.max_models = max_models
        self.adapters: dict[str, ChatAdapter] = (
            adapters
            if adapters is not None
            else {p.name: build_adapter(p.kind, p, max_connections, wire) for p in catalog.providers}
        )
        self.breakers: dict[str, CircuitBreaker] = {}

    # -- ordering ---------------------------------------------------------------------------------

    def fallback_order(self, first: str, ranking: Sequence[str] = ()) -> list[str]:
        """``first``, then the router's ranking, then the catalog chain of each, de-duplicated
        and capped at ``max_models``."""
        known = set(self.catalog.model_ids)
        if first not in known:
            raise UnknownModel(f"model {first!r} is not in the catalog", param="model")
        order: list[str] = []

        def add(m: str) -> None:
            if m in known and m not in order:
                order.append(m)

        add(first)
        for m in ranking:
            add(m)
        i = 0
        while i < len(order):  # transitive catalog chains, breadth first
            for fb in self.catalog.model(order[i]).fallbacks:
                add(fb)
            i += 1
        return order[: self.max_models]

    # -- breakers ---------------------------------------------------------------------------------

    def upstream_key(self, entry: ModelEntry) -> str:
        return f"{entry.provider}/{entry.id}"

    def breaker(self, model_id: str, provider: str | None = None) -> CircuitBreaker:
        """The breaker of ``model_id`` at ``provider`` (default its listed provider), created on
        first use: one per offer, keyed ``provider/model``."""
        key = f"{provider}/{model_id}" if provider else self.upstream_key(self.catalog.model(model_id))
        b = self.breakers.get(key)
        if b is None:
            b = self.breakers[key] = CircuitBreaker(
                key, self._breaker_policy, clock=self._clock, on_change=self._on_breaker_change
            )
        return b

    # -- offers -----------------------------------------------------------------------------------

    def offers(self, model_id: str, kind: str = "complete") -> list[Offer]:
        """The offers of ``model_id`` in the order this call tries them (:mod:`.arbitrage`);
        ``kind`` (``complete`` | ``stream``) picks which latency estimate counts. Only the listed
        offer when arbitrage is off."""
        offers = self.catalog.model(model_id).all_offers
        if len(offers) == 1 or not self.arbitrage.enabled:
            return offers[:1]
        return order_offers(
            offers,
            self.arbitrage,
            is_open=lambda o: self.breaker(model_id, o.provider).state is BreakerState.OPEN,
            latency_s=lambda o: self.latency.estimate(f"{o.provider}/{model_id}:{kind}"),
        )

    # -- one model, with retries ------------------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, UpstreamError) or not exc.retryable:
            return False
        return exc.retry_after_s is None or exc.retry_after_s <= self.retry.max_retry_after_s

    def _wait(self) -> Callable[[RetryCallState], float]:
        backoff = wait_exponential_jitter(
            initial=self.retry.initial_s, max=self.retry.max_s, jitter=self.retry.jitter_s
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            ra = getattr(exc, "retry_after_s", None)
            return float(ra) if ra is not None else backoff(state)

        return wait

    async def _call_model(
        self,
        model_id: str,
        fn: Callable[[ChatAdapter, str], Awaitable[T]],
        attempts: list[Attempt],
        kind: str = "complete",
    ) -> Served:
        """The first of ``model_id``'s offers that answers; a request fault (400/413/422) is
        raised at once, without trying another seller."""
        offers = self.offers(model_id, kind)
        last: UpstreamError | None = None
        for i, offer in enumerate(offers):
            t0 = time.perf_counter()
            try:
                result = await self._call_offer(
                    model_id, offer, fn, attempts, kind, retries=i == len(offers) - 1
                )
            except UpstreamError as exc:
                if exc.http_status in REQUEST_FAULT_STATUSES:
                    raise
                last = exc
                continue
            return Served(offer, result, t0)
        assert last is not None, "a model without offers"
        raise last

    async def _call_offer(
        self,
        model_id: str,
        offer: Offer,
        fn: Callable[[ChatAdapter, str], Awaitable[T]],
        attempts: list[Attempt],
        kind: str,
        retries: bool,
    ) -> T:
        adapter = self.adapters[offer.provider]
        provider = self.catalog.provider(offer.provider)
        breaker = self.breaker(model_id, offer.provider)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(provider.max_retries + 1 if retries else 1),
            wait=self._wait(),
            retry=retry_if_exception(self._retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                ticket = breaker.acquire()
                if ticket is None:
                    attempts.append(
                        Attempt(
                            model=model_id, provider=offer.provider, status="skipped", error="circuit open"
                        )
                    )
                    raise CircuitOpen(breaker.name)
                t0 = time.perf_counter()
                try:
                    result = await fn(adapter, offer.upstream_model or model_id)
                except UpstreamError as exc:
                    if counts_against_upstream(exc):
                        breaker.record_failure(ticket)
                    else:
                        breaker.record_ignored(ticket)
                    attempts.append(
                        self._attempt(
                            model_id,
                            t0,
                            "error",
                            offer=offer,
                            error=exc.message[:300],
                            http_status=exc.http_status,
                        )
                    )
                    log.info(
                        "request %s: upstream %s failed for %s: %s",
                        current_request_id(),
                        offer.provider,
                        model_id,
                        exc.message,
                    )
                    raise
                except BaseException:  # cancelled (the client went away) or a bug: no verdict
                    breaker.record_cancelled(ticket)
                    raise
                breaker.record_success(ticket)
                self.latency.record(f"{offer.provider}/{model_id}:{kind}", time.perf_counter() - t0)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    # -- public calls -----------------------------------------------------------------------------

    def _attempt(
        self,
        model_id: str,
        t0: float,
        status: str,
        *,
        tokens: tuple[int, int, int, int] | None = None,
        offer: Offer,
        **extra: Any,
    ) -> Attempt:
        """An attempt on ``model_id`` bought from ``offer`` that started at ``t0``
        (``perf_counter``); ``tokens`` = (prompt, completion, cached, cache-write) prices it at the
        offer's price (``Price.cost``)."""
        cost = offer.price.cost(*tokens) if tokens is not None else 0.0
        prompt, completion, cached, written = tokens if tokens is not None else (0, 0, 0, 0)
        return Attempt(
            model=model_id,
            provider=offer.provider,
            status=status,
            latency_ms=(time.perf_counter() - t0) * 1000,
            cost_usd=cost,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            cache_write_tokens=written,
            **extra,
        )

    async def complete(
        self, order: Sequence[str], payload: dict[str, Any], attempts: list[Attempt]
    ) -> tuple[str, Completion]:
        """The first model in ``order`` that answers; every try is appended to ``attempts``."""
        last: UpstreamError | None = None
        for model_id in order:
            try:
                served = await self._call_model(model_id, lambda a, up: a.complete(payload, up), attempts)
            except UpstreamError as exc:
                if exc.http_status in REQUEST_FAULT_STATUSES:
                    raise UpstreamRejectedRequest(exc, model_id) from exc
                last = exc
                continue
            result: Completion = served.result
            tokens = _tokens(result, result.completion_tokens)
            attempts.append(self._attempt(model_id, served.t0, "ok", tokens=tokens, offer=served.offer))
            return model_id, result
        assert last is not None, "empty fallback order"
        raise AllUpstreamsFailed(last, list(order))

    async def stream(
        self, order: Sequence[str], payload: dict[str, Any], attempts: list[Attempt]
    ) -> StreamHandle:
        """Open a stream on the first model in ``order`` that yields a first token.

        Chunks before the first content are held back, so a failure before it falls back
        silently; the returned handle's chunks raise :class:`MidStreamError` on a later failure.
        """
        last: UpstreamError | None = None
        for model_id in order:
            usage = StreamUsage()

            async def open_(adapter: ChatAdapter, upstream: str, usage: StreamUsage = usage):
                gen = adapter.stream(payload, upstream, usage)
                held: list[dict[str, Any]] = []
                try:
                    async for chunk in gen:
                        held.append(chunk)
                        if _has_token(chunk):
                            return gen, held
                except BaseException:
                    await gen.aclose()
                    raise
                return None, held  # finished without content: a complete (empty) answer

            try:
                served = await self._call_model(model_id, open_, attempts, "stream")
            except UpstreamError as exc:
                if exc.http_status in REQUEST_FAULT_STATUSES:
                    raise UpstreamRejectedRequest(exc, model_id) from exc
                last = exc
                continue
            gen, held = served.result
            rest = self._rest(model_id, gen, held, usage, attempts, served.t0, served.offer)
            return StreamHandle(model_id, rest, usage, gen)
        assert last is not None, "empty fallback order"
        raise AllUpstreamsFailed(last, list(order))

    async def _rest(
        self,
        model_id: str,
        gen: AsyncIterator[dict[str, Any]] | None,
        held: list[dict[str, Any]],
        usage: StreamUsage,
        attempts: list[Attempt],
        t0: float,
        offer: Offer,
    ) -> AsyncIterator[dict[str, Any]]:
        for chunk in held:
            yield chunk
        if gen is not None:
            try:
                async for chunk in gen:
                    yield chunk
            except UpstreamError as exc:
                self.breaker(model_id, offer.provider).record_failure()
                attempts.append(
                    self._attempt(
                        model_id,
                        t0,
                        "error",
                        tokens=_tokens(usage, len(usage.text)),
                        offer=offer,
                        error=f"mid-stream: {exc.message}"[:300],
                    )
                )
                raise MidStreamError(
                    f"upstream {exc.upstream} failed mid-stream: {exc.message}",
                    upstream=exc.upstream,
                    retryable=False,
                ) from exc
            finally:
                await gen.aclose()  # type: ignore[attr-defined]
        tokens = _tokens(usage, usage.completion_tokens)
        attempts.append(self._attempt(model_id, t0, "ok", tokens=tokens, offer=offer))

    def breaker_states(self) -> dict[str, BreakerState]:
        """State of every breaker created so far, by upstream key."""
        return {k: b.state for k, b in self.breakers.items()}

    async def aclose(self) -> None:
        """Close every adapter's pooled client."""
        for adapter in self.adapters.values():
            await adapter.aclose()


def _tokens(usage: Completion | StreamUsage, completion: int) -> tuple[int, int, int, int]:
    """(prompt, completion, cached, cache-write) tokens of an answer, to price its attempt."""
    return usage.prompt_tokens, completion, usage.cached_tokens, usage.cache_write_tokens


def _has_token(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            return True
    return False

"""The request path (DESIGN.md "Request path") without HTTP or Ray: knobs → router → policy →
providers (with fallbacks, cascades) → response + call event. Thin handlers call this."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.catalog import Catalog
from services.contracts.api import ChatCompletionRequest, FeedbackRequest, FeedbackResponse, SwitchyardKnobs
from services.contracts.events import (
    Attempt,
    CallEvent,
    CallStatus,
    FeedbackEvent,
    FeedbackSource,
    RoutingMode,
    Usage,
    cache_usage,
    prompt_hash,
    utcnow,
)
from services.contracts.topics import CALLS, FEEDBACK
from services.errors import (
    ClientClosedRequest,
    ContextLengthExceeded,
    MaxCostExceeded,
    SwitchyardError,
    UnknownModel,
    UnsupportedParameter,
    UpstreamError,
)
from services.providers.base import Unsupported
from services.providers.compat import incapable_models
from services.providers.pool import MidStreamError, ProviderPool
from services.request_context import bound
from services.router.policy import cascade_ladder

from .auth import Caller
from .budgets import Budgets
from .cachepath import Assembled, CacheKey, CachePath, saved_usd
from .costcap import CostCap, clamp, marks_cache, prompt_tokens_bound
from .degrade import RouteChain, RouteSource
from .emitter import EventEmitter
from .explore import Explorer, Ticket
from .metrics import GatewayMetrics
from .routing import RouteRequest, RouteResult
from .scorer import AnswerScorer
from .semcache import CacheHit, SemanticCache
from .semcache_shared import SharedCacheStore
from .sse import DONE, completion_chunks, sse, usage_chunk

log = logging.getLogger(__name__)

RouteFn = Callable[[RouteRequest], Awaitable[RouteResult]]


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


@dataclass
class CallContext:
    """Everything known about one call while it runs; becomes its CallEvent."""

    request_id: str
    request: ChatCompletionRequest
    knobs: SwitchyardKnobs
    caller: Caller
    task: str
    mode: RoutingMode
    quality_target: float | None
    started: float = field(default_factory=time.perf_counter)
    route: RouteResult | None = None
    router_ms: float = 0.0
    router_fallback: bool = False  # no learned score in time: priors or the catalog default chose
    route_source: RouteSource | None = None  # None: pass-through
    client_request_id: str | None = None  # the caller's own id, kept beside ours
    attempts: list[Attempt] = field(default_factory=list)
    escalated: bool = False
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    payload: dict[str, Any] | None = None  # the upstream body, built once (see ``ChatService.context``)
    # catalog models that cannot honour the request's parameters, with why: never called for it
    incapable: dict[str, Unsupported] = field(default_factory=dict)
    cap: CostCap | None = None  # max_cost_usd, a hard cap (set by ChatService.context)
    cache_key: CacheKey | None = None  # None: the cache neither serves nor stores this request
    cache_hit: CacheHit | None = None  # answered from the cache

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)

    @property
    def route_label(self) -> str:
        return self.mode.value

    @property
    def source_label(self) -> str:
        return self.route_source.value if self.route_source is not None else "passthrough"

    def server_timing(self) -> str:
        """W3C ``Server-Timing``: router, upstream (every attempt) and total ms inside the gateway,
        so a client can tell the gateway's own time from the upstream's per request."""
        upstream = sum(a.latency_ms or 0.0 for a in self.attempts)
        total = (time.perf_counter() - self.started) * 1000
        return f"router;dur={self.router_ms:.2f}, upstream;dur={upstream:.2f}, total;dur={total:.2f}"

    def headers(self) -> dict[str, str]:
        h = {
            "x-switchyard-request-id": self.request_id,
            "x-switchyard-route": self.route_label,
            "x-switchyard-route-source": self.source_label,
        }
        if self.model:
            h["x-switchyard-model"] = self.model
        if self.route:
            h["x-switchyard-router-version"] = self.route.router_version
        if self.client_request_id:
            h["x-client-request-id"] = self.client_request_id
        if self.cache_hit is not None:
            h["x-switchyard-cache"] = "hit"
            h["x-switchyard-cache-similarity"] = f"{self.cache_hit.similarity:.4f}"
            h["x-switchyard-cache-source"] = self.cache_hit.source_request_id
        return h


@dataclass
class ChatResult:
    """A non-streamed answer with its headers."""

    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class StreamResult:
    """A streamed answer: SSE bytes (the first token already secured) and headers."""

    events: AsyncIterator[bytes]
    headers: dict[str, str]


class ChatService:
    """Composes router, policy, providers, scorer, emitter and metrics for chat requests."""

    def __init__(
        self,
        catalog: Catalog,
        pool: ProviderPool,
        route_fn: RouteFn,
        emitter: EventEmitter | None,
        metrics: GatewayMetrics,
        *,
        scorer: AnswerScorer | None = None,
        redact_prompts: bool = False,
        prompt_hash_key: bytes | None = None,
        router_timeout_s: float = 2.0,
        cascade_accept: float = 0.5,
        hard_query_margin: float = 0.1,
        explorer: Explorer | None = None,
        chain: RouteChain | None = None,
        cache: SemanticCache | None = None,
        cache_store: SharedCacheStore | None = None,
        cache_confirm_score: float = 0.8,
        budgets: Budgets | None = None,
    ):
        self.catalog = catalog
        self.pool = pool
        self.chain = chain or RouteChain(catalog, route_fn, timeout_s=router_timeout_s)
        self.emitter = emitter
        self.metrics = metrics
        self.scorer = scorer
        self.redact_prompts = redact_prompts  # every field with the user's text: prompts, comments
        self.prompt_hash_key = prompt_hash_key  # events' prompt hashes are keyed (HMAC)
        self.router_timeout_s = router_timeout_s
        self.cascade_accept = cascade_accept
        self.hard_query_margin = hard_query_margin
        self.explorer = explorer if explorer is not None and explorer.active else None
        self._shadows: set[asyncio.Task[None]] = set()
        self.cachepath = CachePath(
            cache if cache is not None and cache.config.enabled else None,
            catalog,
            metrics,
            self.chain,
            store=cache_store,
            confirm_score=cache_confirm_score,
        )
        self.budgets = budgets or Budgets(None, catalog)  # per key and tenant: budgets.py (none: no-ops)

    @property
    def route_fn(self) -> RouteFn:
        """The router deployment's route call (the chain's first remote source)."""
        return self.chain.remote

    @route_fn.setter
    def route_fn(self, fn: RouteFn) -> None:
        self.chain.remote = fn

    # -- entry points -----------------------------------------------------------------------------

    def context(
        self, req: ChatCompletionRequest, header_knobs: SwitchyardKnobs, caller: Caller, request_id: str
    ) -> CallContext:
        """Resolve the request's model, task, mode and target (body knobs win over headers)."""
        knobs = header_knobs.merged(req.switchyard)
        task = knobs.task or "default"
        defaults = self.catalog.task_defaults(task)
        payload = req.upstream_payload()
        incapable = incapable_models(self.catalog, payload)
        if req.model == self.catalog.routing_model:
            mode = RoutingMode(knobs.mode or defaults.mode)
            target = knobs.quality_target if knobs.quality_target is not None else defaults.quality_target
        elif req.model in self.catalog.model_ids:
            mode, target = RoutingMode.PASSTHROUGH, None
            window = self.catalog.model(req.model).context_window
            if window is not None and (need := req.token_estimate()) > window:
                raise ContextLengthExceeded(
                    f"the request needs about {need} tokens (messages and max_tokens); "
                    f"{req.model} takes {window}",
                    param="messages",
                )
            if (why := incapable.get(req.model)) is not None:
                kind = self.catalog.provider(self.catalog.model(req.model).provider).kind
                raise UnsupportedParameter(
                    f"{req.model} (an {kind} model) cannot honour {why.param}: {why.reason}; use a model "
                    f"that can, or {self.catalog.routing_model!r}, which routes to one",
                    param=why.param,
                )
        else:
            raise UnknownModel(
                f"model {req.model!r} does not exist; use {self.catalog.routing_model!r} "
                "or a model listed by GET /v1/models",
                param="model",
            )
        cap = None
        if knobs.max_cost_usd is not None:
            cap = CostCap(self.catalog, knobs.max_cost_usd, prompt_tokens_bound(req), marks_cache(req))
        return CallContext(
            request_id,
            req,
            knobs,
            caller,
            task,
            mode,
            target,
            payload=payload,
            incapable=incapable,
            cap=cap,
            cache_key=self.cachepath.key(req, knobs, caller, payload),
        )

    async def chat(self, ctx: CallContext) -> ChatResult:
        """Answer a non-streamed request; emit its call event whatever happens."""
        try:
            with bound(ctx.request_id):  # upstream headers and provider log lines carry it
                body = await self._answer(ctx)
        except SwitchyardError as exc:
            self._finish(ctx, error=exc)
            raise
        except asyncio.CancelledError:  # the client went away: the call (and its cost) is recorded
            self._finish(ctx, error=ClientClosedRequest("client disconnected before the answer"))
            raise
        self._finish(ctx)
        body["model"] = ctx.model
        body["id"] = ctx.request_id  # one id: the completion's is the request id feedback names
        self.cachepath.offer(ctx, body)
        if ctx.escalated:  # the client pays for every rung that answered, not only the last one
            body["usage"] = {
                "prompt_tokens": ctx.prompt_tokens,
                "completion_tokens": ctx.completion_tokens,
                "total_tokens": ctx.prompt_tokens + ctx.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cache_usage(ctx.attempts)["cached_tokens"]},
            }
        return ChatResult(
            body,
            {
                **ctx.headers(),
                "x-switchyard-cost-usd": f"{ctx.cost_usd:.8f}",
                "server-timing": ctx.server_timing(),
            },
        )

    async def chat_stream(self, ctx: CallContext) -> StreamResult:
        """Open a stream (falling back silently until its first token) and return its SSE events."""
        if ctx.mode in (RoutingMode.CASCADE, RoutingMode.HYBRID):
            # A cascade must read the whole cheap answer before it can accept it: answer, then stream it.
            result = await self.chat(ctx)
            return StreamResult(self._replay(result.body, ctx), result.headers)
        try:
            with bound(ctx.request_id):
                self.budgets.restrict(ctx)  # the key's allowlist: for cached answers too
                if self.cachepath.lookup(ctx, routed=False):  # an exact repeat: not even routed
                    return self._cached_stream(ctx)
                payload = await self._prepare(ctx)
                if payload is None:
                    return self._cached_stream(ctx)
                order = self.pool.fallback_order(ctx.model or "", ctx.route.ranking if ctx.route else ())
                models = self._fitting(ctx, order)
                handle = await self.pool.stream(models, self._capped(ctx, payload, models), ctx.attempts)
        except SwitchyardError as exc:
            self._finish(ctx, error=exc)
            raise
        ctx.model = handle.model
        include_usage = ctx.request.include_usage

        async def events() -> AsyncIterator[bytes]:
            error: SwitchyardError | None = None
            chunk_id, created = "", 0  # the first chunk's: every chunk, the usage chunk too, carries them
            answer = Assembled() if ctx.cache_key is not None else None  # the answer, for the cache
            try:
                with bound(ctx.request_id):
                    async for chunk in handle.chunks:
                        if not chunk_id:
                            chunk_id = ctx.request_id  # the completion id is the request id
                            created = chunk.get("created") or int(time.time())
                        chunk["id"], chunk["model"] = chunk_id, handle.model
                        if answer is not None:
                            answer.add(chunk)
                        yield sse(chunk)
                ctx.prompt_tokens, ctx.completion_tokens = (
                    handle.usage.prompt_tokens,
                    handle.usage.completion_tokens,
                )
                if include_usage:
                    yield sse(
                        usage_chunk(
                            chunk_id or ctx.request_id,
                            created or int(time.time()),
                            ctx.model,
                            ctx.prompt_tokens,
                            ctx.completion_tokens,
                            handle.usage.cached_tokens,
                        )
                    )
                yield DONE
            except MidStreamError as exc:
                error = exc
                log.warning("request %s: stream failed after first token: %s", ctx.request_id, exc.message)
                yield sse(exc.body())
            except (asyncio.CancelledError, GeneratorExit):
                error = ClientClosedRequest("client disconnected during the stream")
                raise
            finally:
                await handle.aclose()
                self._finish(ctx, error=error)
                if error is None and answer is not None:
                    self.cachepath.offer(ctx, answer.body(ctx.request_id, created, ctx.model))

        return StreamResult(events(), ctx.headers())

    def feedback(self, fb: FeedbackRequest, tenant: str | None = None) -> FeedbackResponse:
        """Record a quality signal (emitted to the feedback topic, keyed by request_id) from
        ``tenant`` (the sender's key id, checked by the caller)."""
        event = FeedbackEvent(
            request_id=fb.request_id,
            score=fb.score,
            label=fb.label,
            source=fb.source,
            comment=None if self.redact_prompts else fb.comment,  # free text is the user's too
            tenant=tenant,
        )
        if self.emitter is not None:
            self.emitter.emit(FEEDBACK, event, key=fb.request_id)
        self.cachepath.feedback(fb.request_id, event.value)
        return FeedbackResponse(request_id=fb.request_id, feedback_id=event.feedback_id)

    # -- the path ---------------------------------------------------------------------------------

    def _fitting(self, ctx: CallContext, order: list[str]) -> list[str]:
        """The models of ``order`` that can honour the request's parameters and whose context
        window takes it (a routed choice or a fallback that cannot gives way to the next one that
        can); a 400 when none can."""
        capable = [m for m in order if m not in ctx.incapable]
        if not capable:
            raise self._none_capable(ctx, order)
        order = capable
        need = ctx.request.token_estimate()
        fit = [m for m in order if (w := self.catalog.model(m).context_window) is None or need <= w]
        if not fit:
            raise ContextLengthExceeded(
                f"the request needs about {need} tokens (messages and max_tokens); no candidate takes "
                f"that many ({', '.join(f'{m}: {self.catalog.model(m).context_window}' for m in order)})",
                param="messages",
            )
        if ctx.cap is not None:
            affordable = [m for m in fit if ctx.cap.affordable(m, ctx.cost_usd)]
            if not affordable:
                raise self._over_cap(ctx, fit)
            fit = affordable
        return fit

    def _over_cap(self, ctx: CallContext, models: list[str]) -> MaxCostExceeded:
        assert ctx.cap is not None
        cheapest = min(models, key=ctx.cap.least_cost)
        return MaxCostExceeded(
            f"no candidate answers within max_cost_usd={ctx.cap.cap_usd:g}: the cheapest, {cheapest}, "
            f"needs at least ${ctx.cap.least_cost(cheapest):.6f} for this prompt "
            f"(about {ctx.cap.prompt_tokens} tokens at most) and a minimal answer",
            param="max_cost_usd",
        )

    def _capped(self, ctx: CallContext, payload: dict[str, Any], models: list[str]) -> dict[str, Any]:
        """``payload`` with a completion limit that keeps a call to any of ``models`` in the cap."""
        if ctx.cap is None:
            return payload
        return clamp(payload, ctx.request, ctx.cap.limit(models, ctx.cost_usd))

    def _none_capable(self, ctx: CallContext, models: list[str]) -> UnsupportedParameter:
        """The 400 for a request no candidate can honour, naming the first parameter at fault."""
        why = ctx.incapable[models[0]]
        return UnsupportedParameter(
            f"no candidate can honour {why.param}: {why.reason} (candidates: {', '.join(models)})",
            param=why.param,
        )

    async def _route(self, ctx: CallContext) -> None:
        if ctx.mode is RoutingMode.PASSTHROUGH:
            ctx.model = ctx.request.model
            return
        defaults = self.catalog.task_defaults(ctx.task)
        target = ctx.quality_target if ctx.quality_target is not None else defaults.quality_target
        pool = defaults.candidates or self.catalog.model_ids
        if ctx.incapable and all(m in ctx.incapable for m in pool):
            raise self._none_capable(ctx, list(pool))
        over = set()
        if ctx.cap is not None:  # the router never picks a model the cap cannot pay for
            over = {m for m in pool if not ctx.cap.affordable(m)}
            if all(m in over or m in ctx.incapable for m in pool):
                raise self._over_cap(ctx, [m for m in pool if m not in ctx.incapable])
        rr = RouteRequest(
            ctx.request.last_user_text(),
            ctx.task,
            target,
            ctx.knobs.max_cost_usd,
            defaults.candidates,
            request_id=ctx.request_id,
            exclude=frozenset(ctx.incapable) | over,
            embed=ctx.cache_key is not None,
        )
        t0 = time.perf_counter()
        try:
            routed = await self.chain.route(rr)
        finally:
            elapsed = time.perf_counter() - t0
            ctx.router_ms = elapsed * 1000
            self.metrics.router_latency.observe(elapsed)
        ctx.model, ctx.route, ctx.route_source = routed.model, routed.route, routed.source
        ctx.router_fallback = routed.route is None
        if routed.why:
            self.metrics.router_fallbacks.labels(source=routed.source.value).inc()

    async def _prepare(self, ctx: CallContext) -> dict[str, Any] | None:
        """Route the call and reserve its budget; None when, once routed, the semantic cache has
        its answer (looked up before the reservation: a hit costs nothing, even over budget). The
        caller has applied the key's allowlist (``budgets.restrict``) before its exact lookup."""
        await self._route(ctx)
        if self.cachepath.lookup(ctx, routed=True):
            return None
        await self.budgets.reserve(ctx)  # its budgets and TPM: a 429 before any upstream call
        payload = ctx.payload if ctx.payload is not None else ctx.request.upstream_payload()
        if ctx.mode is not RoutingMode.PASSTHROUGH:
            self._gate_reasoning(ctx, payload)
        return payload

    def _gate_reasoning(self, ctx: CallContext, payload: dict[str, Any], model: str | None = None) -> None:
        """Models with a reasoning switch get it only when the router found the query hard."""
        entry = self.catalog.model(model or ctx.model or self.catalog.default_model)
        hard = ctx.route is not None and (
            ctx.route.low_margin
            or (ctx.route.margin if ctx.route.margin is not None else 1.0) < self.hard_query_margin
        )
        if entry.reasoning_switch and hard:
            payload["reasoning_effort"] = "high"
        else:
            payload.pop("reasoning_effort", None)

    async def _answer(self, ctx: CallContext) -> dict[str, Any]:
        # the key's allowlist (a 403, or the models it may not use left out): for cached answers too
        self.budgets.restrict(ctx)
        if self.cachepath.lookup(ctx, routed=False):  # an exact repeat: not even routed
            return self.cachepath.body(ctx)
        payload = await self._prepare(ctx)
        if payload is None:
            return self.cachepath.body(ctx)
        assert ctx.model is not None
        if ctx.mode is RoutingMode.CASCADE and not ctx.router_fallback:
            return await self._cascade(
                ctx, payload, self._ladder(ctx, cheapest_first=True), always_score=True
            )
        if ctx.mode is RoutingMode.HYBRID and not ctx.router_fallback:
            low = ctx.route is not None and ctx.route.low_margin
            return await self._cascade(
                ctx, payload, self._ladder(ctx, cheapest_first=False), always_score=low
            )
        order = self.pool.fallback_order(ctx.model, ctx.route.ranking if ctx.route else ())
        models = self._fitting(ctx, order)
        model, result = await self.pool.complete(models, self._capped(ctx, payload, models), ctx.attempts)
        ctx.model, ctx.prompt_tokens, ctx.completion_tokens = (
            model,
            result.prompt_tokens,
            result.completion_tokens,
        )
        return result.body

    def _ladder(self, ctx: CallContext, cheapest_first: bool) -> list[str]:
        """Escalation rungs (the policy's :func:`cascade_ladder`) for this call."""
        assert ctx.route is not None and ctx.model is not None
        return cascade_ladder(
            self.catalog,
            ctx.route.ranking,
            ctx.model,
            cheapest_first=cheapest_first,
            task=ctx.task,
            limit=self.pool.max_models,
        )

    async def _cascade(
        self, ctx: CallContext, payload: dict[str, Any], ladder: list[str], always_score: bool
    ) -> dict[str, Any]:
        question = ctx.request.last_user_text()
        body: dict[str, Any] = {}
        ladder = self._fitting(ctx, ladder)  # rungs whose window cannot take the request are skipped
        for i, rung in enumerate(ladder):
            last = i == len(ladder) - 1
            order = self.pool.fallback_order(rung)[:1] if not last else [rung]
            if ctx.cap is not None and not ctx.cap.affordable(rung, ctx.cost_usd):
                if body:  # the cap is spent: the answer so far is served, no further rung
                    log.info("request %s: %s would exceed max_cost_usd; not escalating", ctx.request_id, rung)
                    return body
                if last:
                    raise self._over_cap(ctx, [rung])
                continue
            try:
                rung_payload = self._capped(ctx, payload, [rung])
                model, result = await self.pool.complete(order, rung_payload, ctx.attempts)
            except UpstreamError:
                if last:
                    raise
                continue  # an unreachable rung escalates
            ctx.model, body = model, result.body
            ctx.prompt_tokens += result.prompt_tokens
            ctx.completion_tokens += result.completion_tokens
            if last or not always_score:
                return body
            confidence = await self._confidence(ctx, question, result.answer_text, model)
            ok = confidence is not None and confidence >= self._accept_line(ctx, model)
            a = ctx.attempts[-1]
            ctx.attempts[-1] = a.model_copy(
                update={"accepted_score": confidence, "status": "ok" if ok else "rejected"}
            )
            if ok:
                return body
            ctx.escalated = True
            self.metrics.escalations.labels(task=self.metrics.task_label(ctx.task)).inc()
            log.info(
                "request %s: %s answer rejected (confidence %s); escalating",
                ctx.request_id,
                model,
                confidence,
            )
        return body

    def _accept_line(self, ctx: CallContext, model: str) -> float:
        """The score a cascade needs to accept ``model``'s answer: the router's table at the
        request's quality target where it has one for that model, else the fixed setting."""
        r = ctx.route
        if r is not None and r.cascade_accept is not None and r.cascade_model == model:
            return r.cascade_accept
        return self.cascade_accept

    async def _confidence(self, ctx: CallContext, question: str, answer: str, model: str) -> float | None:
        if self.scorer is not None:
            score = await self.scorer.score(question, answer, ctx.task, model)
            if score is not None:
                return max(0.0, min(1.0, score))
        # No scorer verdict: fall back to the router's own belief in this model.
        return ctx.route.scores.get(model) if ctx.route else None

    async def _replay(self, body: dict[str, Any], ctx: CallContext) -> AsyncIterator[bytes]:
        """A finished answer as its SSE stream: every choice, text and tool calls alike, then the
        usage chunk (what the client pays for: every rung of a cascade) when asked, under one id."""
        chunk_id, created = ctx.request_id, int(body.get("created") or time.time())
        for chunk in completion_chunks(body, chunk_id, created, ctx.model):
            yield sse(chunk)
        if ctx.request.include_usage:
            cached = cache_usage(ctx.attempts)["cached_tokens"]
            yield sse(
                usage_chunk(chunk_id, created, ctx.model, ctx.prompt_tokens, ctx.completion_tokens, cached)
            )
        yield DONE

    # -- the semantic cache (docs/cache.md; its logic: cachepath.py) -------------------------------

    def _cached_stream(self, ctx: CallContext) -> StreamResult:
        body = self.cachepath.body(ctx)
        self._finish(ctx)
        return StreamResult(self._replay(body, ctx), {**ctx.headers(), "x-switchyard-cost-usd": "0.00000000"})

    # -- exploration (off the request path) -------------------------------------------------------

    def _maybe_explore(self, ctx: CallContext, call: CallEvent) -> None:
        """After the client's answer: fold this routed request into the explorer's windows and,
        when it picks the request, start its shadow call as a task nobody awaits."""
        ex = self.explorer
        if ex is None or ctx.mode is RoutingMode.PASSTHROUGH or ctx.route is None or ctx.model is None:
            return  # pass-through and router-failure calls carry no routing decision to explore
        try:
            decision = ex.consider(
                ctx.task,
                ctx.model,
                # the policy's candidates for this request (its ranking), not every model the router
                # scored: a model the task was never calibrated for is no evidence for this task
                [m for m in ctx.route.ranking or ctx.route.scores if m not in ctx.incapable],
                tried=[a.model for a in ctx.attempts if a.status in ("ok", "rejected")],
                prompt_tokens=ctx.prompt_tokens,
                completion_tokens=ctx.completion_tokens,
            )
        except Exception:  # noqa: BLE001 - exploration never fails a request
            log.exception("request %s: exploration decision failed", ctx.request_id)
            return
        if isinstance(decision, str):
            self.metrics.explore_skipped.labels(task=self.metrics.task_label(ctx.task), reason=decision).inc()
            return
        try:
            task = asyncio.get_running_loop().create_task(self._shadow(ctx, decision, call))
        except RuntimeError:  # no running loop (a stream closed outside one): give the slot back
            ex.settle(decision, 0.0)
            return
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, ctx: CallContext, ticket: Ticket, call: CallEvent) -> None:
        """One shadow call: the same payload to ``ticket.model`` through the pool (no fallback:
        the answer must be that model's), graded by the judge; a call event (mode ``explore``,
        ``shadow_of`` the client's call) and a feedback event (source ``explore``) follow."""
        ex = self.explorer
        assert ex is not None and ex.judge is not None
        if ex.budget is not None and not await ex.budget.admit(ticket.task, ticket.estimate_usd):
            ex.settle(ticket, 0.0)  # the fleet's hourly budget is spent: no call, the slot back
            self.metrics.explore_skipped.labels(task=self.metrics.task_label(ctx.task), reason="budget").inc()
            return
        shadow_id = new_request_id()
        attempts: list[Attempt] = []
        judge_usd, outcome = 0.0, "crashed"
        try:
            question = ctx.request.last_user_text()
            t0 = time.perf_counter()
            error: SwitchyardError | None = None
            result = None
            with bound(shadow_id):
                payload = ctx.request.upstream_payload()
                self._gate_reasoning(ctx, payload, ticket.model)
                try:
                    _, result = await self.pool.complete([ticket.model], payload, attempts)
                except UpstreamError as exc:
                    error = exc
                latency_ms = (time.perf_counter() - t0) * 1000
                score = None
                if result is not None:
                    verdict = await ex.judge.grade(question, result.content)
                    judge_usd = ex.judge_cost_usd(verdict.prompt_tokens, verdict.completion_tokens)
                    score = verdict.score
            if error is not None:
                outcome = "error"
                log.info(
                    "shadow %s of %s: %s failed: %s", shadow_id, ctx.request_id, ticket.model, error.message
                )
            elif score is None:
                outcome = "unjudged"
            else:
                outcome = "accepted" if score >= self.cascade_accept else "rejected"
            self._emit_shadow(call, ticket, shadow_id, attempts, result, latency_ms, error, score)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:  # noqa: BLE001 - a broken shadow call is logged and counted, never raised
            log.exception("shadow %s of %s failed", shadow_id, ctx.request_id)
        finally:
            spend = sum(a.cost_usd for a in attempts) + judge_usd
            ex.settle(ticket, spend)
            if ex.budget is not None and spend > ticket.estimate_usd:
                charge = asyncio.get_running_loop().create_task(
                    ex.budget.charge(ticket.task, spend - ticket.estimate_usd)
                )
                self._shadows.add(charge)
                charge.add_done_callback(self._shadows.discard)
            task = self.metrics.task_label(ctx.task)
            self.metrics.explore_calls.labels(task=task, model=ticket.model, outcome=outcome).inc()
            self.metrics.explore_spend.labels(task=task).inc(spend)

    def _emit_shadow(
        self,
        call: CallEvent,
        ticket: Ticket,
        shadow_id: str,
        attempts: list[Attempt],
        result: Any,
        latency_ms: float,
        error: SwitchyardError | None,
        score: float | None,
    ) -> None:
        if self.emitter is None:
            return
        # the client's call event with what the shadow call changed: same task, tenant, prompt
        # (hash computed once), router decision and target
        event = call.model_copy(
            update={
                "request_id": shadow_id,
                "ts": utcnow(),
                "requested_model": ticket.model,
                "mode": RoutingMode.EXPLORE,
                "router_fallback": False,
                "chosen_model": ticket.model if result is not None else None,
                "attempts": attempts,
                "escalated": False,
                "stream": False,
                "usage": Usage(
                    prompt_tokens=result.prompt_tokens if result is not None else 0,
                    completion_tokens=result.completion_tokens if result is not None else 0,
                    **cache_usage(attempts),
                ),
                "cost_usd": sum(a.cost_usd for a in attempts),
                "latency_ms": latency_ms,
                "status": CallStatus.ERROR if error else CallStatus.OK,
                "error": error.message[:500] if error else None,
                "shadow_of": call.request_id,
            }
        )
        self.emitter.emit(CALLS, event, key=shadow_id)
        if score is not None:
            judge = self.explorer.judge.judge_model if self.explorer and self.explorer.judge else "judge"
            feedback = FeedbackEvent(
                request_id=shadow_id,
                score=max(0.0, min(1.0, score)),
                source=FeedbackSource.EXPLORE,
                comment=f"{judge} on {ticket.model}'s shadow answer to {call.request_id}",
            )
            self.emitter.emit(FEEDBACK, feedback, key=shadow_id)

    async def stop_exploring(self, timeout_s: float = 0.0) -> None:
        """Let running shadow calls finish for up to ``timeout_s``, then cancel the rest."""
        pending = set(self._shadows)
        if pending and timeout_s > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- accounting -------------------------------------------------------------------------------

    def _finish(self, ctx: CallContext, error: SwitchyardError | None = None) -> None:
        latency_ms = (time.perf_counter() - ctx.started) * 1000
        status = CallStatus.ERROR if error else CallStatus.OK
        prompt = ctx.request.last_user_text()
        event = CallEvent(
            request_id=ctx.request_id,
            task=ctx.task,
            tenant=ctx.caller.tenant,  # identity comes from the key's config, never from the caller's words
            client_tenant=ctx.knobs.tenant,
            prompt_hash=prompt_hash(prompt, self.prompt_hash_key),
            prompt=None if self.redact_prompts else prompt,
            requested_model=ctx.request.model,
            mode=ctx.mode,
            router_version=ctx.route.router_version if ctx.route else None,
            router_fallback=ctx.router_fallback,
            route_source=ctx.route_source.value if ctx.route_source is not None else None,
            client_request_id=ctx.client_request_id,
            scores=ctx.route.scores if ctx.route else {},
            quality_target=ctx.quality_target,
            threshold=ctx.route.threshold if ctx.route else None,
            chosen_model=ctx.model,
            attempts=ctx.attempts,
            escalated=ctx.escalated,
            stream=ctx.request.stream,
            usage=Usage(
                prompt_tokens=ctx.prompt_tokens,
                completion_tokens=ctx.completion_tokens,
                **cache_usage(ctx.attempts),
            ),
            cost_usd=ctx.cost_usd,
            latency_ms=latency_ms,
            status=status,
            error=error.message[:500] if error else None,
            cache_hit=ctx.cache_hit is not None,
            cache_similarity=round(ctx.cache_hit.similarity, 6) if ctx.cache_hit else None,
            cache_source_request_id=ctx.cache_hit.source_request_id if ctx.cache_hit else None,
            cache_saved_usd=saved_usd(ctx.cache_hit),
        )
        if self.emitter is not None:
            self.emitter.emit(CALLS, event, key=ctx.request_id)
        self._observe(ctx, event, error)
        self.budgets.settle(ctx)  # the reservation becomes the actual cost
        if error is None and self.explorer is not None and ctx.cache_hit is None:
            self._maybe_explore(ctx, event)
        log.log(
            logging.WARNING if error else logging.DEBUG,
            "request %s %s mode=%s model=%s router=%s cost=%.6f latency_ms=%.1f",
            ctx.request_id,
            status.value,
            ctx.mode.value,
            ctx.model,
            event.router_version,
            event.cost_usd,
            latency_ms,
        )

    def _observe(self, ctx: CallContext, event: CallEvent, error: SwitchyardError | None) -> None:
        m = self.metrics
        task = m.task_label(ctx.task)  # bounded: a client names any task it likes
        if ctx.route is not None:
            m.serving(ctx.route.router_version)
        m.requests.labels(mode=ctx.mode.value, task=task, status=event.status.value).inc()
        m.latency.labels(mode=ctx.mode.value, stream=str(ctx.request.stream).lower()).observe(
            event.latency_ms / 1000
        )
        if error:
            m.errors.labels(status=str(error.status), code=error.code).inc()
            error.counted = True
        for a in ctx.attempts:
            if a.status in ("ok", "rejected"):
                tier = self.catalog.model(a.model).tier
                m.cost.labels(model=a.model, tier=tier, task=task).inc(a.cost_usd)
                m.observe_cache(a.model, tier, task, a.cached_tokens, a.cache_write_tokens)
                m.upstream_latency.labels(model=a.model).observe(a.latency_ms / 1000)
        if ctx.cache_hit is not None:
            m.cache_saved.labels(task=task).inc(event.cache_saved_usd or 0.0)
        if ctx.model and not error and ctx.cache_hit is None:  # a hit called no model
            tier = self.catalog.model(ctx.model).tier
            m.routes.labels(
                model=ctx.model, tier=tier, task=task, mode=ctx.mode.value, source=ctx.source_label
            ).inc()
            m.tokens.labels(model=ctx.model, tier=tier, task=task, kind="prompt").inc(ctx.prompt_tokens)
            m.tokens.labels(model=ctx.model, tier=tier, task=task, kind="completion").inc(
                ctx.completion_tokens
            )
            first = ctx.attempts[0].model if ctx.attempts else ctx.model
            if first != ctx.model and not ctx.escalated:
                m.fallbacks.labels(from_model=first, to_model=ctx.model).inc()
        if self.emitter is not None:
            m.queue_depth.set(self.emitter.queue_depth)
            m.spool_records.set(self.emitter.spool.pending)

"""The composition root: real adapters (providers, Kafka emitter, router handle) wired into a
:class:`Gateway`. Tests wire fakes through the same function."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from services.catalog import Catalog, load_catalog
from services.contracts.settings import KafkaSettings, PrivacySettings
from services.providers.arbitrage import ArbitragePolicy
from services.providers.breaker import BreakerPolicy
from services.providers.pool import ProviderPool, RetryPolicy

from .app import Gateway
from .auth import KeyStore
from .body import BodyLimits
from .budgets import Budgets
from .cachepolicy import CachePolicyFollower
from .degrade import LocalRouter, RouteChain, TaskPriors
from .emitter import EmitterConfig, EventEmitter
from .explore import ExploreConfig, Explorer
from .identity import RequestIds
from .metrics import GatewayMetrics
from .ratelimit import AuthFailureLimiter, LimitStore, RateLimiter, SharedBudget
from .routing import RouteRequest, RouteResult
from .scorer import AnswerScorer, JudgeScorer
from .semcache import CacheConfig, SemanticCache
from .semcache_shared import SharedCacheStore
from .service import ChatService
from .settings import GatewaySettings

log = logging.getLogger(__name__)

AnswerScoreFn = Callable[[str, str, str], Awaitable[float | None]]


class ChainScorer:
    """The first scorer with a verdict wins (the router's learned scorer, then the judge)."""

    def __init__(self, router_score: AnswerScoreFn | None, fallback: AnswerScorer | None):
        self.router_score = router_score
        self.fallback = fallback

    async def score(self, question: str, answer: str, task: str | None, model: str) -> float | None:
        if self.router_score is not None:
            try:
                s = await self.router_score(question, answer, model)
            except Exception as exc:  # noqa: BLE001 - a scorer failure escalates via the fallback
                log.warning("router answer scorer failed: %s", exc)
                s = None
            if s is not None:
                return s
        return await self.fallback.score(question, answer, task, model) if self.fallback else None


def semantic_cache(settings: GatewaySettings) -> SemanticCache | None:
    """The replica's semantic cache from the ``cache_*`` settings (None when it is off)."""
    if not settings.cache_enabled:
        return None
    config = CacheConfig(
        capacity=settings.cache_capacity,
        ttl_s=settings.cache_ttl_s,
        pending_ttl_s=settings.cache_pending_ttl_s,
        **({"threshold": settings.cache_threshold} if settings.cache_threshold is not None else {}),
    )
    tasks = {**config.tasks, **settings.cache_tasks}
    return SemanticCache(config.model_copy(update={"tasks": tasks}))


def explore_config(settings: GatewaySettings, shared: bool = False) -> ExploreConfig:
    """The explorer's configuration from the ``explore_*`` settings; ``shared``: the budget is
    counted in the shared store (the fleet's), not split across the ingress replicas."""
    replicas = 1 if shared else settings.ingress_replicas
    return ExploreConfig(
        enabled=settings.explore_enabled,
        share=settings.explore_share,
        expensive_share=settings.explore_expensive_share,
        min_requests=settings.explore_min_requests,
        window=settings.explore_window_requests,
        # the budget is the gateway's: without a shared store each ingress replica explores with
        # its share of it (of the configured replica count: an autoscaled fleet may hold more)
        budget_usd_per_task_hour=settings.explore_budget_usd_per_task_hour / replicas,
        max_concurrency=settings.explore_max_concurrency,
        judge_usd_per_mtok=settings.explore_judge_usd_per_mtok,
    )


def in_serve_replica() -> bool:
    """Whether this process is a Ray Serve replica (its metrics then also go out through Ray's
    metrics agent, summed across the fleet)."""
    if "ray" not in sys.modules:
        return False
    try:
        from ray import serve

        serve.get_replica_context()
    except Exception:  # noqa: BLE001 - RayServeException outside a replica
        return False
    return True


def limit_store(settings: GatewaySettings, metrics: GatewayMetrics) -> LimitStore:
    """Where this replica counts its limits (``rate_limit_storage*`` settings), failures counted."""
    password = settings.rate_limit_storage_password
    if settings.rate_limit_storage == "memory://" and settings.ingress_replicas > 1:
        log.warning(
            "rate limits are counted per ingress replica (memory://): %d replicas admit %d × each limit; "
            "set SWITCHYARD_GATEWAY_RATE_LIMIT_STORAGE to a shared redis:// store",
            settings.ingress_replicas,
            settings.ingress_replicas,
        )
    return LimitStore(
        settings.rate_limit_storage,
        password=password.get_secret_value() if password else None,
        timeout_s=settings.rate_limit_storage_timeout_s,
        retry_s=settings.rate_limit_storage_retry_s,
        on_error=metrics.rate_limit_store_errors.inc,
        on_state=lambda up: metrics.rate_limit_store_up.set(1 if up else 0),
    )


def build_gateway(
    settings: GatewaySettings,
    route_fn: Callable[[RouteRequest], Awaitable[RouteResult]],
    router_status: Callable[[], Awaitable[dict[str, Any]]],
    *,
    catalog: Catalog | None = None,
    kafka: KafkaSettings | None = None,
    answer_score: AnswerScoreFn | None = None,
    pool: ProviderPool | None = None,
    emitter: EventEmitter | None = None,
    local_router: LocalRouter | None = None,
    local_is_primary: bool = False,
    fleet_metrics: bool | None = None,
) -> Gateway:
    """Wire the gateway from settings; unset collaborators are the real ones. ``fleet_metrics``
    (default: whether this is a Serve replica) also exports the metrics through Ray."""
    catalog = catalog or load_catalog(settings.catalog_path)
    for warning in catalog.resilience_warnings():
        log.warning("catalog: %s", warning)
    metrics = GatewayMetrics(fleet=in_serve_replica() if fleet_metrics is None else fleet_metrics)
    metrics.know_tasks([*catalog.tasks, *settings.metric_tasks])
    limits = limit_store(settings, metrics)
    pool = pool or ProviderPool(
        catalog,
        retry=RetryPolicy(
            initial_s=settings.retry_initial_s,
            max_s=settings.retry_max_s,
            max_retry_after_s=settings.max_retry_after_s,
        ),
        breaker=BreakerPolicy(
            failure_rate=settings.breaker_failure_rate,
            min_calls=settings.breaker_min_calls,
            window_s=settings.breaker_window_s,
            reset_timeout_s=settings.breaker_reset_s,
            half_open_probes=settings.breaker_half_open_probes,
        ),
        on_breaker_change=metrics.set_breaker,
        max_models=settings.max_models_per_request,
        max_connections=settings.upstream_max_connections,
        wire=settings.providers_transport,
        arbitrage=ArbitragePolicy(
            enabled=settings.arbitrage,
            slow_factor=settings.arbitrage_slow_factor,
            slow_min_gap_s=settings.arbitrage_slow_min_gap_s,
            latency_ttl_s=settings.arbitrage_latency_ttl_s,
        ),
    )
    if emitter is None and settings.events_enabled:
        k = kafka or KafkaSettings()
        emitter = EventEmitter(
            EmitterConfig(
                bootstrap=k.bootstrap,
                spool_dir=settings.spool_path,
                topic_prefix=k.topic_prefix,
                client_id=f"{k.client_id}-gateway",
                queue_size=settings.emitter_queue_size,
                client_options=k.client_options(),
            )
        )
    judge = None
    if settings.judge_model and settings.judge_provider in pool.adapters:
        judge = JudgeScorer(pool.adapters[settings.judge_provider], settings.judge_model)
    budget = SharedBudget(settings.explore_budget_usd_per_task_hour, limits) if limits.is_shared else None
    explorer = Explorer(catalog, explore_config(settings, shared=budget is not None), judge, budget=budget)
    if settings.explore_enabled and judge is None:
        log.warning("exploration is on but no judge is configured to grade shadow calls: it stays off")
    budgets = Budgets(
        settings.budgets,
        catalog,
        limits,
        completion_tokens=settings.budget_completion_tokens,
        max_models=settings.max_models_per_request,
        metrics=metrics,
    )
    if budgets.active and not limits.is_shared and settings.ingress_replicas > 1:
        log.warning("budgets are counted per ingress replica (memory://): each replica may spend each budget")
    cache = semantic_cache(settings)
    cache_follower, cache_store, cache_stop = None, None, asyncio.Event()
    storage, secret = settings.rate_limit_storage, settings.rate_limit_storage_password
    if settings.cache_storage:
        storage, secret = settings.cache_storage, settings.cache_storage_password
    if cache is not None and settings.cache_shared and storage.startswith(("redis://", "rediss://")):
        cache_store = SharedCacheStore.from_url(
            cache,
            storage,
            password=secret.get_secret_value() if secret else None,
            # replicas tail the log within a second; one that starts loads the live entries instead
            stream_maxlen=settings.cache_capacity,
        )
    if cache is not None and settings.events_enabled:  # the false-hit watch's actions (cachepolicy.py)
        k = kafka or KafkaSettings()
        cache_follower = CachePolicyFollower(cache, k.bootstrap, k.topic_prefix, **k.client_options())
    service = ChatService(
        catalog,
        pool,
        route_fn,
        emitter,
        metrics,
        scorer=ChainScorer(answer_score, judge),
        redact_prompts=settings.redact_prompts,
        prompt_hash_key=PrivacySettings().key(settings.state_dir),
        router_timeout_s=settings.router_timeout_s,
        cascade_accept=settings.cascade_accept,
        hard_query_margin=settings.hard_query_margin,
        explorer=explorer,
        budgets=budgets,
        cache=cache,
        cache_store=cache_store,
        cache_confirm_score=settings.cache_confirm_score,
        chain=RouteChain(
            catalog,
            route_fn,
            timeout_s=settings.router_timeout_s,
            priors=TaskPriors(half_life=settings.prior_half_life, min_decisions=settings.prior_min_decisions),
            local=local_router,
            local_is_primary=local_is_primary and local_router is not None,
        ),
    )
    rate = settings.auth_failures_per_minute
    auth_limiter = AuthFailureLimiter(rate, limits) if rate else None
    hashes = settings.key_hashes()
    if not hashes:
        log.warning("no API keys configured: the gateway accepts every caller")

    cache_tasks: set[asyncio.Task[None]] = set()

    async def on_start() -> None:
        if emitter is not None:
            await emitter.start()
        if cache_follower is not None:
            await cache_follower.start()
        if cache_store is not None:
            cache_tasks.add(asyncio.get_running_loop().create_task(cache_store.run(cache_stop)))

    async def on_stop() -> None:
        await service.stop_exploring(timeout_s=2.0)  # their events go out before the emitter stops
        await budgets.drain()  # the last calls' settlements reach the store
        if cache_follower is not None:
            await cache_follower.stop()
        if cache_store is not None:
            cache_stop.set()
            for t in list(cache_tasks):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 3.0)
            await cache_store.aclose()
        if emitter is not None:
            await emitter.stop()
        await pool.aclose()

    return Gateway(
        service,
        KeyStore(hashes, settings.judge_key_hashes, settings.key_tenants),
        RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst, limits),
        metrics,
        settings.max_body_bytes,
        router_status,
        on_start,
        on_stop,
        auth_failures=auth_limiter,
        request_ids=RequestIds(settings.request_id_secret()),
        feedback_max_age_s=settings.feedback_max_age_s,
        body_limits=BodyLimits(settings.body_timeout_s, settings.body_min_bytes_per_s, settings.body_grace_s),
        metrics_public=settings.metrics_public,
        docs_public=settings.docs_public,
    )

"""Ray Serve: the router deployment, the FastAPI ingress, and the typed app builder.

``build_app(GatewayArgs)`` is the import path of ``serve_config.yaml``
(``services.gateway.deployments:build_app``), usable by ``serve run``/``serve deploy``/KubeRay.
The router reference and a poll interval travel in the deployments' ``user_config``; every
replica follows that reference (an MLflow alias) by itself (:mod:`services.gateway.follow`), so
moving the alias is the whole deployment of a new router: nothing is redeployed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from services.catalog import load_catalog
from services.contracts.settings import KafkaSettings
from services.router.cheap import load_cheap_router
from services.router.settings import RouterSettings

from .app import create_app
from .bootstrap import build_gateway
from .budgets import BudgetConfig, check_models
from .degrade import LocalRouter
from .follow import AliasFollower, mlflow_resolver
from .routing import RouterConfig, RouteRequest, RouteResult, RouterLoadFailed, RouterRuntime, default_loader
from .settings import GatewaySettings

log = logging.getLogger(__name__)

APP_NAME = "switchyard"


def _quiet_logs() -> None:
    """Per-request lines (ours, httpx's) cost CPU on every call: keep INFO for events that matter."""
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def _set_threads(n: int) -> None:
    """torch's intra-op threads (before any router loads); 0 keeps Ray's default. ONNX Runtime
    gets its count through the loader (``RouterSettings.encoder_options``)."""
    if n <= 0:
        return
    import os
    import sys

    os.environ["OMP_NUM_THREADS"] = str(n)  # read by OpenMP (torch) itself, not by our code
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


class RouterAdmission:
    """Overload control of a router replica (one event loop: no locks).

    A request is refused at once when the requests ahead of it cannot be scored within its
    budget (the caller then serves the catalog default now, not after waiting the budget out),
    and one dequeued after its deadline is not scored (its caller has already moved on; scoring
    it would only take the CPU the requests behind it need).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, smoothing: float = 0.2):
        self.clock = clock
        self.smoothing = smoothing
        self.pending = 0  # admitted, not answered yet
        self.per_query_s = 0.0  # moving average of scoring seconds per query
        self.shed = 0
        self.expired = 0

    def admit(self, budget_s: float | None) -> float | None:
        """The request's deadline, or ``TimeoutError`` when the queue ahead outlasts its budget."""
        if budget_s and (self.pending + 1) * self.per_query_s > budget_s:
            self.shed += 1
            raise TimeoutError(
                f"router busy: {self.pending} queued at {1000 * self.per_query_s:.1f} ms a query"
            )
        self.pending += 1
        return self.clock() + budget_s if budget_s else None

    def done(self) -> None:
        self.pending -= 1

    def live(self, deadlines: list[float | None]) -> list[int]:
        """Indexes of the batch still worth scoring (deadline not passed)."""
        now = self.clock()
        keep = [i for i, d in enumerate(deadlines) if d is None or d > now]
        self.expired += len(deadlines) - len(keep)
        return keep

    def scored(self, n: int, seconds: float) -> None:
        """Record a scored batch (``n`` queries in ``seconds``)."""
        if n:
            q = seconds / n
            a = self.smoothing
            self.per_query_s = q if not self.per_query_s else (1 - a) * self.per_query_s + a * q

    def stats(self) -> dict[str, float]:
        return {
            "pending": self.pending,
            "per_query_ms": 1000 * self.per_query_s,
            "shed": self.shed,
            "expired_unscored": self.expired,
        }


@serve.deployment(name="RouterDeployment", max_ongoing_requests=512)
class RouterDeployment:
    """Router replicas: batched scoring + the routing policy; hot-swappable via ``user_config``."""

    def __init__(self, settings: GatewaySettings, router: RouterSettings):
        _quiet_logs()
        _set_threads(settings.router_threads)
        options = router.encoder_options(settings.router_threads, settings.state_dir)
        self.runtime = RouterRuntime(
            load_catalog(settings.catalog_path),
            functools.partial(default_loader, **options),
            last_good=(settings.state_dir / "router" / "last-good").resolve(),
        )
        self._route_batch.set_max_batch_size(settings.router_batch_size)
        self._route_batch.set_batch_wait_timeout_s(settings.router_batch_wait_s)
        self._swap_lock = asyncio.Lock()
        self.admission = RouterAdmission()
        self.follower = AliasFollower(mlflow_resolver(), self._apply)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Validate the config (invalid → raise), then follow its reference: load + smoke-check +
        swap the version it points at now, and again whenever the alias moves; a model that fails
        to load or check leaves the serving one in place."""
        cfg = RouterConfig.model_validate(user_config)
        await self.follower.configure(cfg.router_ref, cfg.poll_s)

    async def _apply(self, ref: str) -> bool:
        async with self._swap_lock:
            return await asyncio.to_thread(self.runtime.swap, ref)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _route_batch(
        self, items: list[tuple[RouteRequest, float | None]]
    ) -> list[RouteResult | Exception]:
        live = self.admission.live([deadline for _, deadline in items])
        out: list[RouteResult | Exception] = [
            TimeoutError("router deadline passed while queued") for _ in items
        ]
        if live:
            t0 = time.perf_counter()
            try:
                scored = await asyncio.to_thread(self.runtime.route, [items[i][0] for i in live])
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                scored = [exc] * len(live)
            self.admission.scored(len(live), time.perf_counter() - t0)
            for i, res in zip(live, scored, strict=True):
                out[i] = res
        return out

    async def route(self, request: RouteRequest, budget_s: float | None = None) -> RouteResult:
        """Scores and the policy's decision for one request (batched with its neighbours); one
        still queued ``budget_s`` after it arrived is not scored (its caller stopped waiting),
        and one that cannot be scored within ``budget_s`` is refused at once."""
        deadline = self.admission.admit(budget_s)
        try:
            result = await self._route_batch((request, deadline))
        finally:
            self.admission.done()
        if isinstance(result, Exception):
            raise result
        return result

    async def answer_score(self, question: str, answer: str, model: str) -> float | None:
        """The router's learned cascade scorer on one answer (``None`` if it has none for ``model``)."""
        out = await asyncio.to_thread(self.runtime.answer_scores, [question], [answer], model)
        return out[0]

    async def status(self) -> dict[str, Any]:
        """What is serving and how the last swap went."""
        s = asdict(self.runtime.status)
        s["loaded"] = self.runtime.router is not None
        s["history"] = s["history"][-10:]
        s["admission"] = self.admission.stats()
        s["follow"] = self.follower.report()
        return s


@serve.deployment(name="ChatIngress", max_ongoing_requests=256)
@serve.ingress()
class ChatIngress:
    """The OpenAI-compatible HTTP front door (FastAPI), reaching the router through a handle."""

    def __init__(
        self,
        router: DeploymentHandle,
        settings: GatewaySettings,
        kafka: KafkaSettings,
        router_settings: RouterSettings | None = None,
    ):
        _quiet_logs()
        self._router = router

        budget_s = settings.router_timeout_s

        async def route_fn(req: RouteRequest) -> RouteResult:
            return await router.route.remote(req, budget_s)

        self._settings = settings
        options = (router_settings or RouterSettings()).encoder_options(
            settings.router_threads, settings.state_dir
        )
        self._loader = functools.partial(_load_only, **options)
        catalog = load_catalog(settings.catalog_path)
        self._local = LocalRouter(catalog, functools.partial(load_cheap_router, **options))
        if settings.cheap_router_ref and not self._local.swap(settings.cheap_router_ref):
            log.error("the cheap router %s cannot be held in the ingress", settings.cheap_router_ref)

        async def router_status() -> dict[str, Any]:
            return await router.status.remote()

        async def answer_score(question: str, answer: str, model: str) -> float | None:
            return await router.answer_score.remote(question, answer, model)

        self.gateway = build_gateway(
            settings,
            route_fn,
            router_status,
            kafka=kafka,
            answer_score=answer_score,
            local_router=self._local,
        )
        self._swap_lock = asyncio.Lock()
        self.follower = AliasFollower(mlflow_resolver(), self._apply)
        self.gateway.follow_status = self.follower.report

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The serving router's ref (the same ``user_config`` as the router deployment's), followed
        here too: held and scored here when placement puts it in the ingress (a static router),
        else the deployment scores and the ingress keeps its cheap router (if any) for
        degradation."""
        cfg = RouterConfig.model_validate(user_config)
        await self.follower.configure(cfg.router_ref, cfg.poll_s)

    async def _apply(self, ref: str) -> bool:
        async with self._swap_lock:
            return await asyncio.to_thread(self._place, ref)

    def _place(self, ref: str) -> bool:
        s, chain = self._settings, self.gateway.service.chain
        try:
            loaded = self._loader(ref)
        except Exception as exc:  # noqa: BLE001 - the deployment refuses it too: nothing changes
            log.error("router %s cannot be loaded in the ingress (%s): placement unchanged", ref, exc)
            return False
        static = _is_static(loaded)
        # the tasks this router knows get their own metric label (any other task is "other")
        self.gateway.service.metrics.know_tasks(getattr(loaded, "task_vocab", None) or [])
        placement = s.router_placement
        if placement == "auto":
            placement = "ingress" if static and s.router_num_gpus == 0 else "deployment"
        if placement == "ingress" and self._local.swap(ref):
            chain.local_is_primary = True
            log.info("the ingress scores with the cheap router %s itself", self._local.version)
            return True
        # a transformer champion: the deployment scores; a cheap router held here (the configured
        # one, or the last static champion) stays as the degradation stage
        chain.local_is_primary = False
        log.info("the ingress asks the router deployment (%s); cheap stage: %s", ref, self._local.version)
        return True

    def __serve_build_asgi_app__(self):  # noqa: ANN204 - Serve's hook
        return create_app(self.gateway)

    async def __del__(self) -> None:
        self.follower.stop()
        await self.gateway.stop()


class GatewayArgs(BaseModel):
    """Typed arguments of the app builder (``args:`` in the Serve config). Unset values come from
    ``SWITCHYARD_GATEWAY_*`` / ``SWITCHYARD_KAFKA_*`` env vars."""

    model_config = ConfigDict(extra="forbid")

    router_ref: str | None = None
    catalog_path: Path | None = None
    kafka_bootstrap: str | None = None
    topic_prefix: str | None = None
    spool_dir: Path | None = None
    router_num_gpus: float | None = Field(default=None, ge=0)
    router_replicas: int | None = Field(default=None, ge=1)
    ingress_replicas: int | None = Field(default=None, ge=1)
    settings: dict[str, Any] = Field(default_factory=dict, description="Further GatewaySettings fields.")
    kafka: dict[str, Any] = Field(default_factory=dict, description="Further KafkaSettings fields.")
    router: dict[str, Any] = Field(
        default_factory=dict, description="RouterSettings fields (the serving encoder's overrides)."
    )

    def gateway_settings(self) -> GatewaySettings:
        fields = {
            k: v
            for k, v in {
                "router_ref": self.router_ref,
                "catalog_path": self.catalog_path,
                "spool_dir": self.spool_dir,
                "router_num_gpus": self.router_num_gpus,
                "router_replicas": self.router_replicas,
                "ingress_replicas": self.ingress_replicas,
            }.items()
            if v is not None
        }
        return GatewaySettings(**{**self.settings, **fields})

    def router_settings(self) -> RouterSettings:
        return RouterSettings(**self.router)

    def kafka_settings(self) -> KafkaSettings:
        fields = {"bootstrap": self.kafka_bootstrap, "topic_prefix": self.topic_prefix}
        return KafkaSettings(**{**self.kafka, **{k: v for k, v in fields.items() if v is not None}})

    def resolved(self) -> GatewayArgs:
        """These args with every setting spelled out (env read once, here), API keys as hashes
        only: what `switchyard serve` records so a later swap rebuilds the very same app."""
        s, k = self.gateway_settings(), self.kafka_settings()
        settings = s.model_dump(
            mode="json", exclude={"router_ref", "api_keys", "api_key_hashes", "id_secret"}
        )
        settings["api_key_hashes"] = s.key_hashes()
        return GatewayArgs(
            router_ref=s.router_ref,
            settings=settings,
            kafka=k.model_dump(mode="json"),
            router=self.router_settings().model_dump(mode="json"),
        )


def _is_static(router: Any) -> bool:
    return getattr(getattr(router, "encoder_config", None), "backend", None) == "static"


def _load_only(ref: str, **encoder_options: Any) -> Any:
    """An artefact for the ingress: loaded and verified (a static one with its encoder, ~0.3 s; a
    transformer one without: its encoder is built on first use, which never happens here)."""
    from services.router import artifact

    try:
        return artifact.load_router(ref, **encoder_options)
    except Exception as exc:  # noqa: BLE001
        raise RouterLoadFailed(f"cannot load router {ref!r}: {type(exc).__name__}: {exc}") from exc


def build_app(args: GatewayArgs) -> Application:
    """The Serve application: ``ChatIngress`` → handle → ``RouterDeployment`` (GPU when asked)."""
    settings = args.gateway_settings()
    kafka = args.kafka_settings()
    router_settings = args.router_settings()
    catalog = load_catalog(settings.catalog_path)  # fail here, loudly, on a broken catalog
    check_models(settings.budgets or BudgetConfig(), catalog)  # and on an allowlist naming another model
    # The model ref lives only in user_config: changing it reconfigures in place, never redeploys.
    # Plain API keys never travel to the replicas: only their hashes do.
    shared = settings.model_copy(
        # the request-id secret neither: each replica reads it from its own environment or key file
        update={"router_ref": "", "api_keys": [], "api_key_hashes": settings.key_hashes(), "id_secret": None}
    )
    actor: dict[str, Any] = {"num_cpus": settings.router_num_cpus}
    logging_config = {"enable_access_log": settings.access_log}
    if settings.router_num_gpus > 0:
        actor["num_gpus"] = settings.router_num_gpus
    # Both deployments follow the same reference (an alias: each replica polls it, see follow.py).
    follow = RouterConfig(router_ref=settings.router_ref, poll_s=settings.router_poll_s).model_dump()
    router = RouterDeployment.options(
        num_replicas=settings.router_replicas,
        logging_config=logging_config,
        ray_actor_options=actor,
        user_config=follow,
    ).bind(shared, router_settings)
    return ChatIngress.options(
        user_config=follow,
        num_replicas=settings.ingress_replicas,
        logging_config=logging_config,
        max_ongoing_requests=settings.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.ingress_num_cpus},
    ).bind(router, shared, kafka, router_settings)

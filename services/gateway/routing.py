"""What the ingress asks the router deployment, and the runtime behind that deployment:
batched scoring, the routing policy, and the hot swap (load → smoke-check → atomic swap)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.catalog import Catalog
from services.router.base import Query, Router
from services.router.policy import RoutingPolicy, ScoreRatioPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteRequest:
    """One request's routing question."""

    prompt: str
    task: str | None
    quality_target: float
    max_cost_usd: float | None = None
    candidates: list[str] | None = None
    request_id: str | None = None  # the gateway's id, so the router's log lines name the request
    # models that cannot honour the request's parameters (an Anthropic model asked for n > 1):
    # never chosen, whatever the candidates (docs/api.md, "OpenAI compatibility")
    exclude: frozenset[str] = frozenset()
    # return the query's embedding with the decision (the gateway's semantic cache matches on it:
    # no second encoder pass)
    embed: bool = False


@dataclass(frozen=True)
class RouteResult:
    """The router's answer: scores, the policy's choice and its fallback ranking."""

    scores: dict[str, float]
    router_version: str
    model: str
    ranking: list[str]
    threshold: float | None
    margin: float | None
    low_margin: bool
    reason: str = ""
    # the router's cascade table at this request's quality target: a cascade accepts an answer of
    # ``cascade_model`` scoring at least ``cascade_accept`` (None: the gateway's fixed setting)
    cascade_model: str | None = None
    cascade_accept: float | None = None
    # the query's embedding (float32 bytes) when the request asked for it, and the embedding space
    # it lives in (encoder and weights): vectors of different spaces are never compared
    embedding: bytes | None = None
    embedding_space: str | None = None


class RouterConfig(BaseModel):
    """The router deployment's ``user_config``: validated, an invalid one is rejected loudly."""

    model_config = ConfigDict(extra="forbid")

    router_ref: str = Field(min_length=1, description="models:/name@alias, models:/name/version or a path.")
    poll_s: float = Field(
        default=5.0,
        ge=0,
        description="How often each replica re-resolves an alias (models:/name@alias) and swaps to "
        "the version it points at; 0: resolve once.",
    )


class RouterLoadFailed(RuntimeError):
    """Loading or smoke-checking a router failed; the serving one stays."""


@dataclass
class SwapStatus:
    """What the runtime is serving and how the last swap went."""

    ref: str | None = None
    version: str | None = None
    loaded_at: float | None = None
    last_error: str | None = None
    swaps: int = 0
    failed_swaps: int = 0
    history: list[str] = field(default_factory=list)
    restored: str | None = None  # the last good version restored from the local cache, if serving it


def default_loader(ref: str, **encoder_options: Any) -> Router:
    """Load a router with the router package's loader (MLflow URI or path) and smoke-check it;
    ``encoder_options`` (``RouterSettings.encoder_options``) go to ``load_router``."""
    try:
        from services.router import artifact  # the router area's loader
    except ImportError as exc:  # pragma: no cover - depends on the router area
        raise RouterLoadFailed(f"router loader unavailable: {exc}") from exc
    try:
        router = artifact.load_router(ref, **encoder_options)
        if hasattr(artifact, "smoke_check"):
            artifact.smoke_check(router)
    except Exception as exc:  # noqa: BLE001 - any failure keeps the old router
        raise RouterLoadFailed(f"cannot load router {ref!r}: {type(exc).__name__}: {exc}") from exc
    return router


SMOKE_QUERIES = [Query("What is 2 + 2?", None), Query("Explain the causes of the French Revolution.", None)]


def smoke(router: Router, catalog: Catalog) -> None:
    """Our own minimum check before serving a router: finite scores in [0,1] for catalog models."""
    out = router.scores(SMOKE_QUERIES)
    if len(out) != len(SMOKE_QUERIES):
        raise RouterLoadFailed(f"router returned {len(out)} score rows for {len(SMOKE_QUERIES)} queries")
    known = set(catalog.model_ids)
    for row in out:
        usable = {m: p for m, p in row.items() if m in known}
        if not usable:
            raise RouterLoadFailed("router scores no catalog model")
        bad = {m: p for m, p in usable.items() if not (0.0 <= float(p) <= 1.0)}
        if bad:
            raise RouterLoadFailed(f"router scores outside [0, 1]: {bad}")


class RouterRuntime:
    """Holds the serving router; ``swap`` replaces it atomically or not at all.

    With a ``last_good`` directory, every router swapped in is also copied there (verified
    artefact files only), and a replica that starts with no router and cannot load the one it is
    asked for restores that copy instead of serving without a router."""

    def __init__(
        self,
        catalog: Catalog,
        loader: Callable[[str], Router] = default_loader,
        last_good: Path | None = None,
    ):
        self.catalog = catalog
        self._loader = loader
        self._lock = threading.Lock()
        self._router: Router | None = None
        self._policy: Any = None
        self.last_good = last_good
        self.status = SwapStatus()

    @property
    def router(self) -> Router | None:
        return self._router

    def swap(self, ref: str) -> bool:
        """Load ``ref``, check it, swap it in; on any failure keep the old router and return False."""
        if ref == self.status.ref and self._router is not None:
            return True
        t0 = time.perf_counter()
        try:
            router, policy = self._load(ref)
        except Exception as exc:  # noqa: BLE001
            self.status.failed_swaps += 1
            self.status.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "router swap to %s FAILED, still serving %s: %s",
                ref,
                self.status.version,
                self.status.last_error,
            )
            if self._router is None:
                self._restore_last_good()
            return False
        with self._lock:
            old = self.status.version
            self._router, self._policy = router, policy
            self.status.ref, self.status.version = ref, router.version
            self.status.loaded_at, self.status.last_error = time.time(), None
            self.status.restored = None
            self.status.swaps += 1
            self.status.history.append(router.version)
        log.info("router swapped %s -> %s (%s) in %.1fs", old, router.version, ref, time.perf_counter() - t0)
        self._keep_last_good(router)
        return True

    def _load(self, ref: str) -> tuple[Router, RoutingPolicy | ScoreRatioPolicy]:
        router = self._loader(ref)
        smoke(router, self.catalog)
        return router, self._make_policy(router)

    def _keep_last_good(self, router: Router) -> None:
        """Copy a router that passed every check to the local last-good cache."""
        src = getattr(router, "path", None)
        if self.last_good is None or src is None:
            return
        try:
            self.last_good.mkdir(parents=True, exist_ok=True)
            dest = self.last_good / router.version
            if not dest.exists():
                tmp = self.last_good / f".{router.version}.{os.getpid()}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src, tmp)
                tmp.replace(dest)
            pointer = self.last_good / "CURRENT"
            staged = self.last_good / f".CURRENT.{os.getpid()}"
            staged.write_text(router.version)
            staged.replace(pointer)
            for old in self.last_good.iterdir():
                if old.is_dir() and not old.name.startswith(".") and old.name != router.version:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            log.warning("cannot cache router %s as the last good one: %s", router.version, exc)

    def _restore_last_good(self) -> None:
        """Serve the cached last good router when no router is loaded at all."""
        if self.last_good is None:
            return
        try:
            version = (self.last_good / "CURRENT").read_text().strip()
        except OSError:
            return
        try:
            router, policy = self._load(str(self.last_good / version))
        except Exception as exc:  # noqa: BLE001
            log.error("the cached last good router %s cannot be restored either: %s", version, exc)
            return
        with self._lock:
            self._router, self._policy = router, policy
            self.status.version, self.status.loaded_at = router.version, time.time()
            self.status.restored = router.version
            self.status.history.append(router.version)
        log.warning("serving the last good router %s from the local cache", router.version)

    def _make_policy(self, router: Router) -> RoutingPolicy | ScoreRatioPolicy:
        calibration = getattr(router, "calibration", None)
        if calibration is None:
            return ScoreRatioPolicy(self.catalog)
        return RoutingPolicy(self.catalog, calibration)

    def route(self, requests: Sequence[RouteRequest]) -> list[RouteResult | Exception]:
        """Score a batch with one router call, then decide each request (a failed decision is
        returned as its exception, so the rest of the batch is served)."""
        with self._lock:
            router, policy = self._router, self._policy
        if router is None:
            raise RouterLoadFailed("no router loaded")
        queries = [Query(r.prompt if r.prompt.strip() else "(empty)", r.task) for r in requests]
        # with the query embeddings when a request asked for them and the router exposes them
        # (``scored``: the same encoder pass as its scores), with the space they live in
        scored = getattr(router, "scored", None)
        space = getattr(router, "embedding_space", None)
        vectors = None
        if scored is not None and space is not None and any(r.embed for r in requests):
            rows, vectors = scored(queries)
        else:
            rows = router.scores(queries)
        out: list[RouteResult | Exception] = []
        for i, (r, row) in enumerate(zip(requests, rows, strict=True)):
            try:
                res = self._decide(router.version, policy, r, {m: float(p) for m, p in row.items()})
                res = _with_cascade(router, res, r.quality_target)
                if vectors is not None and r.embed:
                    vec = vectors[i].astype(np.float32).tobytes()
                    res = replace(res, embedding=vec, embedding_space=space)
                out.append(res)
                log.debug("request %s: %s chose %s: %s", r.request_id, router.version, res.model, res.reason)
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail its batch
                log.info("request %s: router %s could not decide: %s", r.request_id, router.version, exc)
                out.append(exc)
        return out

    def answer_scores(self, prompts: Sequence[str], answers: Sequence[str], model: str) -> list[float | None]:
        """Cascade: the router's answer scorer's P(acceptable) per answer; ``None`` when it has none
        for ``model``."""
        with self._lock:
            router = self._router
        scorer = getattr(router, "cascade", None)
        if router is None or scorer is None or getattr(scorer, "model", None) != model:
            return [None] * len(prompts)
        return list(router.answer_scores(list(prompts), list(answers), model))  # type: ignore[attr-defined]

    def _decide(self, version: str, policy: Any, req: RouteRequest, scores: dict[str, float]) -> RouteResult:
        known = set(self.catalog.model_ids)
        scores = {m: p for m, p in scores.items() if m in known}
        candidates = req.candidates
        if req.exclude:
            calibrated = policy.candidates_for(req.task) if isinstance(policy, RoutingPolicy) else None
            asked = candidates or calibrated or list(scores)
            candidates = [m for m in asked if m not in req.exclude]
            if not candidates:
                raise ValueError(
                    f"every candidate was left out: none can honour the request ({sorted(asked)})"
                )
        d = policy.decide(scores, req.task, req.quality_target, req.max_cost_usd, candidates)
        return RouteResult(
            scores, version, d.model, list(d.ranking), d.threshold, d.margin, d.low_margin, d.reason
        )


def _with_cascade(router: Router, res: RouteResult, quality_target: float) -> RouteResult:
    """Attach the router's target-aware cascade acceptance threshold, when it has one."""
    spec = getattr(getattr(router, "manifest", None), "cascade", None)
    threshold = getattr(router, "cascade_threshold", None)
    if spec is None or threshold is None:
        return res
    accept = threshold(spec.model, quality_target)
    return res if accept is None else replace(res, cascade_model=spec.model, cascade_accept=accept)

"""Routing that degrades, never to the most expensive model: the best score available in time.

For a routed request (``switchyard/auto``) the ingress asks, in order:

1. **the router** — the learned router the deployment serves (``source=router``). When the
   serving artefact is a cheap one (static embeddings, :mod:`services.router.static_backend`) and
   placement allows, the ingress runs it in its own process instead (``source=cheap``): no Ray
   hop, ~0.1 CPU ms a query, so every request can be routed at line rate;
2. **the cheap router** — when the router did not answer within its budget (overload, a replica
   restarting) and a cheap router is held locally (``cheap_router_ref``, or the serving artefact
   itself when it is static): ``source=cheap``;
3. **per-task priors learned from traffic** — the mix of models the learned routers chose for the
   task over its recent decisions, drawn from at random (so the task's expected cost and quality
   stay what they were at nominal load): ``source=prior``; a task without enough decisions uses the
   mix of all tasks;
4. **the catalog's ``default_model``** — an explicit, documented choice of the catalog (the
   default catalog names a budget model, not the strong one): ``source=default``.

Every decision is labelled in the response header ``x-switchyard-route-source``, the call
event's ``route_source`` and the metric ``switchyard_routes_total{source=...}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.catalog import Catalog

from .routing import RouteRequest, RouteResult, RouterRuntime

log = logging.getLogger(__name__)

RouteFn = Callable[[RouteRequest], Awaitable[RouteResult]]
PLACEMENTS = ("auto", "ingress", "deployment")


class RouteSource(StrEnum):
    """Where a routed request's model came from (best first)."""

    ROUTER = "router"  # the router deployment's learned router
    CHEAP = "cheap"  # the cheap (static-embedding) router, in the ingress process
    PRIOR = "prior"  # the task's recent decision mix
    DEFAULT = "default"  # the catalog's default_model


@dataclass(frozen=True)
class Routed:
    """The chain's answer: the model, the learned decision behind it (None for priors and the
    default), where it came from, and why the better sources were passed over."""

    model: str
    route: RouteResult | None
    source: RouteSource
    why: str = ""


class TaskPriors:
    """Per task, exponentially decayed counts of the models the learned routers chose.

    ``draw(task)`` samples a model in proportion to them: under overload the task keeps the mix
    (hence the expected cost and quality) it had when every request was scored. Counts decay by
    ``0.5 ** (1 / half_life)`` per decision of the task, so the mix follows the current router.
    """

    def __init__(self, *, half_life: int = 500, min_decisions: int = 20, rng: random.Random | None = None):
        if half_life < 1 or min_decisions < 1:
            raise ValueError("half_life and min_decisions must be at least 1")
        self.decay = 0.5 ** (1.0 / half_life)
        self.min_decisions = min_decisions
        self.rng = rng or random.Random()
        self._tasks: dict[str, dict[str, float]] = {}
        self._all: dict[str, float] = {}
        self._n: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe(self, task: str, model: str) -> None:
        """Record one learned decision for ``task``."""
        with self._lock:
            for counts in (self._tasks.setdefault(task, {}), self._all):
                for m in counts:
                    counts[m] *= self.decay
                counts[model] = counts.get(model, 0.0) + 1.0
            self._n[task] = self._n.get(task, 0) + 1

    def draw(self, task: str) -> tuple[str, str] | None:
        """A model for ``task`` and which mix it came from (``task`` or ``all``); None without
        enough decisions anywhere."""
        with self._lock:
            if self._n.get(task, 0) >= self.min_decisions:
                counts, scope = self._tasks[task], "task"
            elif sum(self._n.values()) >= self.min_decisions:
                counts, scope = self._all, "all"
            else:
                return None
            models, weights = list(counts), list(counts.values())
        return self.rng.choices(models, weights=weights, k=1)[0], scope

    def snapshot(self) -> dict[str, Any]:
        """Each task's decision count and current mix (shares), for the status endpoint."""
        with self._lock:
            out = {}
            for task, counts in self._tasks.items():
                total = sum(counts.values()) or 1.0
                out[task] = {
                    "decisions": self._n.get(task, 0),
                    "mix": {m: round(c / total, 3) for m, c in sorted(counts.items(), key=lambda x: -x[1])},
                }
            return out


class LocalRouter:
    """A router artefact held in the ingress process (the cheap stage): load, swap, route.

    Only artefacts with a cheap encoder are taken (the ``static`` backend): a transformer router
    in every ingress replica would cost the CPU the ingress needs for line rate."""

    def __init__(self, catalog: Catalog, loader: Callable[..., Any]):
        # loader: services.router.cheap.load_cheap_router with the serving encoder options bound
        # (it refuses any router that is not a static one, and warms it up)
        self.catalog = catalog
        self.runtime = RouterRuntime(catalog, loader=loader)

    @property
    def version(self) -> str | None:
        return self.runtime.status.version if self.runtime.router is not None else None

    def swap(self, ref: str) -> bool:
        """Load ``ref`` as the local cheap router (False, and the old one kept, when it is not one)."""
        return self.runtime.swap(ref)

    def route(self, req: RouteRequest) -> RouteResult:
        [res] = self.runtime.route([req])
        if isinstance(res, Exception):
            raise res
        return res


class RouteChain:
    """The degradation order for one ingress replica (see the module docstring)."""

    def __init__(
        self,
        catalog: Catalog,
        remote: RouteFn,
        *,
        timeout_s: float,
        priors: TaskPriors | None = None,
        local: LocalRouter | None = None,
        local_is_primary: bool = False,
    ):
        self.catalog = catalog
        self.remote = remote
        self.timeout_s = timeout_s
        self.priors = priors or TaskPriors()
        self.local = local
        self.local_is_primary = local_is_primary
        self._warned_at = -1e9

    def _local(self, rr: RouteRequest, why: list[str]) -> RouteResult | None:
        if self.local is None or self.local.runtime.router is None:
            return None
        try:
            return self.local.route(rr)
        except Exception as exc:  # noqa: BLE001 - the next source answers
            why.append(f"cheap router: {type(exc).__name__}: {exc}")
            return None

    async def _remote(self, rr: RouteRequest, why: list[str]) -> RouteResult | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.remote(rr)
        except Exception as exc:  # noqa: BLE001 - a router failure is not a request failure
            why.append(f"router: {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
            return None

    async def route(self, rr: RouteRequest) -> Routed:
        """The best decision available within the budget."""
        why: list[str] = []
        if self.local_is_primary and (res := self._local(rr, why)) is not None:
            return self._learned(rr, res, RouteSource.CHEAP, why)
        if (res := await self._remote(rr, why)) is not None:
            return self._learned(rr, res, RouteSource.ROUTER, why)
        if not self.local_is_primary and (res := self._local(rr, why)) is not None:
            return self._learned(rr, res, RouteSource.CHEAP, why)
        task = rr.task or "default"
        drawn = self.priors.draw(task)
        if (
            drawn is not None
            and (not rr.candidates or drawn[0] in rr.candidates)
            and drawn[0] not in rr.exclude
        ):
            model, scope = drawn
            self._warn(rr, f"{'; '.join(why)}; using the {scope} prior ({model})")
            return Routed(model, None, RouteSource.PRIOR, "; ".join(why))
        model = self.catalog.default_model
        self._warn(rr, f"{'; '.join(why)}; no prior yet: using the catalog default {model}")
        return Routed(model, None, RouteSource.DEFAULT, "; ".join(why))

    def _learned(self, rr: RouteRequest, res: RouteResult, source: RouteSource, why: list[str]) -> Routed:
        self.priors.observe(rr.task or "default", res.model)
        if why:
            self._warn(rr, f"{'; '.join(why)}; using the {source.value} stage")
        return Routed(res.model, res, source, "; ".join(why))

    def _warn(self, rr: RouteRequest, what: str) -> None:
        # one warning a second at most: an overloaded router degrades many requests a second
        now = time.monotonic()
        loud = now - self._warned_at >= 1.0
        if loud:
            self._warned_at = now
        log.log(logging.WARNING if loud else logging.DEBUG, "request %s: %s", rr.request_id, what)

    def status(self) -> dict[str, Any]:
        return {
            "primary": "cheap (in the ingress)" if self.local_is_primary else "router deployment",
            "cheap_router": self.local.version if self.local is not None else None,
            "priors": self.priors.snapshot(),
        }

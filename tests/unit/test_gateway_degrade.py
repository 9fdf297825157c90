"""The degradation order of routed requests: router → cheap router → task prior → catalog default,
never the most expensive model by default, each decision labelled."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from services.catalog import load_catalog
from services.gateway.degrade import RouteChain, RouteSource, TaskPriors
from services.gateway.routing import RouteRequest, RouteResult

CATALOG = load_catalog(None)
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def result(model: str, version: str = "v1") -> RouteResult:
    return RouteResult({WEAK: 0.8, STRONG: 0.9}, version, model, [STRONG, WEAK], 0.1, 0.05, False)


class Remote:
    def __init__(self, model: str = STRONG, delay_s: float = 0.0, broken: bool = False):
        self.model, self.delay_s, self.broken, self.calls = model, delay_s, broken, 0

    async def __call__(self, rr: RouteRequest) -> RouteResult:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.broken:
            raise TimeoutError("router busy: 40 queued at 9.0 ms a query")
        return result(self.model, "full")


class Local:
    """A LocalRouter stand-in: ``runtime.router`` set means it holds a router."""

    def __init__(self, model: str = WEAK, broken: bool = False):
        self.model, self.broken, self.calls = model, broken, 0
        self.runtime = type("R", (), {"router": object()})()
        self.version = "static-1"

    def route(self, rr: RouteRequest) -> RouteResult:
        self.calls += 1
        if self.broken:
            raise RuntimeError("tokenizer exploded")
        return result(self.model, "static-1")


def rr(task: str = "astronomy", candidates: list[str] | None = None) -> RouteRequest:
    return RouteRequest("q", task, 0.95, candidates=candidates, request_id="req_1")


def test_priors_draw_the_tasks_mix_and_follow_the_current_router() -> None:
    p = TaskPriors(half_life=50, min_decisions=10, rng=random.Random(0))
    assert p.draw("law") is None  # nothing learned anywhere yet
    for i in range(100):
        p.observe("law", WEAK if i % 4 else STRONG)  # 75 % weak
    drawn = Counter(p.draw("law")[0] for _ in range(4000))
    assert drawn[WEAK] / 4000 == pytest.approx(0.75, abs=0.05)
    # a task without its own decisions borrows the mix of all tasks, and says so
    assert p.draw("new-task")[1] == "all"
    # the router changed its mind: after a few half-lives the old choices barely count
    for _ in range(300):
        p.observe("law", STRONG)
    assert Counter(p.draw("law")[0] for _ in range(1000))[STRONG] > 950
    snap = p.snapshot()["law"]
    assert snap["decisions"] == 400 and next(iter(snap["mix"])) == STRONG
    with pytest.raises(ValueError):
        TaskPriors(half_life=0)


async def test_the_router_answers_when_it_can() -> None:
    remote, local = Remote(), Local()
    chain = RouteChain(CATALOG, remote, timeout_s=0.5, local=local)
    out = await chain.route(rr())
    assert (out.model, out.source, out.why) == (STRONG, RouteSource.ROUTER, "")
    assert local.calls == 0


async def test_a_late_router_degrades_to_the_cheap_router_within_the_budget() -> None:
    chain = RouteChain(CATALOG, Remote(delay_s=5.0), timeout_s=0.05, local=Local())
    t0 = time.perf_counter()
    out = await chain.route(rr())
    assert time.perf_counter() - t0 < 1.0
    assert out.source is RouteSource.CHEAP and out.model == WEAK and out.route is not None
    assert out.why.startswith("router: TimeoutError")


async def test_no_cheap_router_then_the_task_prior_then_the_catalog_default() -> None:
    remote = Remote(model=WEAK)
    chain = RouteChain(CATALOG, remote, timeout_s=0.5, priors=TaskPriors(min_decisions=3))
    for _ in range(3):
        assert (await chain.route(rr("law"))).source is RouteSource.ROUTER
    remote.broken = True
    out = await chain.route(rr("law"))
    assert (out.source, out.model, out.route) == (RouteSource.PRIOR, WEAK, None)
    assert "router busy" in out.why
    # a prior model outside the request's candidates is not used
    out = await chain.route(rr("law", candidates=[STRONG]))
    assert out.source is RouteSource.DEFAULT
    # nothing learned at all: the catalog's explicit default, which is not the strong model
    fresh = RouteChain(CATALOG, Remote(broken=True), timeout_s=0.5)
    out = await fresh.route(rr("law"))
    assert out.source is RouteSource.DEFAULT and out.model == CATALOG.default_model
    assert CATALOG.default_model != CATALOG.strong_model


async def test_a_cheap_router_in_the_ingress_is_asked_first_and_the_deployment_only_when_it_fails() -> None:
    remote, local = Remote(), Local()
    chain = RouteChain(CATALOG, remote, timeout_s=0.5, local=local, local_is_primary=True)
    out = await chain.route(rr())
    assert (out.source, out.model, remote.calls) == (RouteSource.CHEAP, WEAK, 0)
    local.broken = True
    out = await chain.route(rr())
    assert out.source is RouteSource.ROUTER and remote.calls == 1 and "tokenizer exploded" in out.why
    assert chain.status()["primary"].startswith("cheap")


async def test_learned_decisions_of_either_stage_teach_the_prior() -> None:
    local = Local(model=WEAK)
    chain = RouteChain(
        CATALOG,
        Remote(broken=True),
        timeout_s=0.5,
        local=local,
        local_is_primary=True,
        priors=TaskPriors(min_decisions=2),
    )
    await chain.route(rr("t"))
    await chain.route(rr("t"))
    local.broken = True
    out = await chain.route(rr("t"))
    assert out.source is RouteSource.PRIOR and out.model == WEAK

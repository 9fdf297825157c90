"""Budgeted exploration in-process (no Ray, no network): shadow calls to a cheaper model for tasks
routed mostly to the top tier run after the client's answer, at the configured share, within the
per-task hourly budget, each as one call event (mode explore, shadow_of) and one feedback event
(source explore) that the streams join turns into a labelled outcome; failures never reach the
client and are counted."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import httpx
import pytest

from services.catalog import load_catalog
from services.contracts.api import FeedbackRequest
from services.contracts.events import CallEvent, FeedbackEvent, FeedbackSource, RoutingMode
from services.gateway.app import create_app
from services.gateway.bootstrap import build_gateway, explore_config
from services.gateway.emitter import EmitterConfig, EventEmitter
from services.gateway.explore import ExploreConfig, Explorer
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import STRONG, WEAK, Broker, FakeProducer, FakeRouter, Upstream, mock_adapters
from services.providers.pool import ProviderPool, RetryPolicy
from streams.join import CallFeedbackJoin

CATALOG = load_catalog()
KEY = "sk-test-explore"
JUDGE = "switchyard/judge"


class Stack:
    def __init__(self, tmp_path: Path, choose: str = STRONG, **explore) -> None:
        self.upstream, self.router, self.broker = Upstream(), FakeRouter(choose), Broker()
        adapters = mock_adapters(CATALOG, httpx.MockTransport(self.upstream))
        pool = ProviderPool(
            CATALOG, retry=RetryPolicy(initial_s=0.001, max_s=0.001, jitter_s=0), adapters=adapters
        )
        emitter = EventEmitter(
            EmitterConfig(bootstrap="x:1", spool_dir=tmp_path / "spool"), lambda: FakeProducer(self.broker)
        )
        settings = GatewaySettings(
            api_key_hashes=[hash_key(KEY)],
            metric_tasks=["contracts"],  # the task these tests explore has its own metric label
            **{"explore_share": 1.0, "explore_min_requests": 1, "explore_budget_usd_per_task_hour": 10.0}
            | explore,
        )
        self.gw = build_gateway(
            settings, self.router.route, self.router.status, catalog=CATALOG, pool=pool, emitter=emitter
        )
        self.service = self.gw.service
        assert self.service.explorer is not None
        self.explorer = self.service.explorer
        self.explorer.rng = random.Random(7)
        self.now = 1000.0
        self.explorer.clock = lambda: self.now
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.gw)),
            base_url="http://gw",
            headers={"authorization": f"Bearer {KEY}"},
        )

    async def ask(self, task: str = "contracts", **kw) -> httpx.Response:
        body = {
            "model": "switchyard/auto",
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "switchyard": {"task": task},
            **kw,
        }
        r = await self.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r

    async def settle(self) -> None:
        await self.service.stop_exploring(timeout_s=10)

    async def events(self) -> tuple[list[CallEvent], list[FeedbackEvent]]:
        await self.settle()
        assert await self.service.emitter.flush(5)
        calls, feedback = [], []
        for topic, _, v in self.broker.log:
            if topic.endswith("calls.v1"):
                calls.append(CallEvent.model_validate(json.loads(v)))
            elif topic.endswith("feedback.v1"):
                feedback.append(FeedbackEvent.model_validate(json.loads(v)))
        return calls, feedback

    def metric(self, name: str, **labels: str) -> float:
        value = self.gw.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def shadows(calls: list[CallEvent]) -> list[CallEvent]:
    return [c for c in calls if c.mode is RoutingMode.EXPLORE]


async def test_a_slow_shadow_call_runs_after_the_answer_and_never_delays_it(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    s.upstream.delay[WEAK] = 1.5
    t0 = time.perf_counter()
    r = await s.ask()
    took = time.perf_counter() - t0
    assert (
        r.json()["model"] == STRONG
        and r.json()["choices"][0]["message"]["content"] == f"answer from {STRONG}"
    )
    assert took < 1.0, f"the client waited {took:.2f}s for a shadow call"
    assert s.explorer.in_flight == 1  # admitted, not awaited
    await asyncio.sleep(0.2)
    assert s.upstream.calls == [STRONG, WEAK] and s.explorer.in_flight == 1  # the shadow is still running
    await s.settle()
    assert s.upstream.calls == [STRONG, WEAK, JUDGE] and s.explorer.in_flight == 0


async def test_each_shadow_call_is_one_call_event_and_one_explore_feedback(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    r = await s.ask()
    rid = r.headers["x-switchyard-request-id"]
    calls, feedback = await s.events()
    client, shadow = calls[0], calls[1]
    assert len(calls) == 2 and client.request_id == rid and client.shadow_of is None
    assert client.mode is RoutingMode.ROUTE and client.chosen_model == STRONG
    assert shadow.mode is RoutingMode.EXPLORE and shadow.shadow_of == rid and shadow.request_id != rid
    assert shadow.chosen_model == WEAK and shadow.requested_model == WEAK and shadow.status == "ok"
    assert shadow.cost_usd == pytest.approx(CATALOG.model(WEAK).price.cost(10, 2))
    assert (shadow.usage.prompt_tokens, shadow.usage.completion_tokens) == (10, 2)
    assert shadow.scores == client.scores and shadow.router_version == "v-test"
    assert [a.model for a in shadow.attempts] == [WEAK]
    # the upstream saw the shadow's own server-issued id
    assert s.upstream.request_ids[1] == shadow.request_id
    [fb] = feedback
    assert fb.request_id == shadow.request_id and fb.source is FeedbackSource.EXPLORE and fb.score == 1.0
    # ... which the streams join turns into a labelled outcome with its source visible
    j = CallFeedbackJoin({}, ttl_s=100.0, tiers={m.id: m.tier for m in CATALOG.models}, accept_threshold=0.5)
    assert j.on_call(shadow, now=0) is None
    out = j.on_feedback(fb, now=1)
    assert (
        out is not None and out.mode is RoutingMode.EXPLORE and out.feedback_source is FeedbackSource.EXPLORE
    )
    assert out.chosen_model == WEAK and out.tier == "budget" and out.accepted and out.predicted == 0.9


async def test_streamed_answers_are_explored_too(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    r = await s.ask(stream=True)
    assert b"[DONE]" in r.content
    calls, feedback = await s.events()
    [shadow] = shadows(calls)
    assert shadow.shadow_of == r.headers["x-switchyard-request-id"] and len(feedback) == 1


async def test_a_candidate_task_is_shadowed_at_about_the_configured_share(tmp_path: Path) -> None:
    s = Stack(tmp_path, explore_share=0.2, explore_max_concurrency=1000)
    n = 200
    for _ in range(n):
        await s.ask()
    calls, feedback = await s.events()
    k = len(shadows(calls))
    assert 0.1 * n <= k <= 0.3 * n, k
    assert len(feedback) == k
    assert s.metric("switchyard_explore_calls_total", task="contracts", model=WEAK, outcome="accepted") == k
    assert s.metric("switchyard_explore_skipped_total", task="contracts", reason="share") == n - k


async def test_the_hourly_budget_caps_a_tasks_spend(tmp_path: Path) -> None:
    budget = 0.005
    s = Stack(tmp_path, explore_budget_usd_per_task_hour=budget)
    estimate = s.explorer.estimate_usd(WEAK, 10, 2)
    for _ in range(40):
        await s.ask()
        await s.settle()
    spent = s.metric("switchyard_explore_spend_usd_total", task="contracts")
    done = s.metric("switchyard_explore_calls_total", task="contracts", model=WEAK, outcome="accepted")
    assert 0 < done < 40 and spent <= budget
    assert spent + estimate > budget  # it stopped because the next call's estimate no longer fit
    assert s.metric("switchyard_explore_skipped_total", task="contracts", reason="budget") == 40 - done
    # another task has its own budget
    await s.ask(task="other")
    await s.settle()
    assert s.metric("switchyard_explore_calls_total", task="other", model=WEAK, outcome="accepted") == 1
    # an hour later the task's spend has aged out of the window
    s.now += 3601
    await s.ask()
    await s.settle()
    assert (
        s.metric("switchyard_explore_calls_total", task="contracts", model=WEAK, outcome="accepted")
        == done + 1
    )


async def test_a_shared_budget_is_asked_by_the_shadow_call_and_holds(tmp_path: Path) -> None:
    # with a shared store the budget is the fleet's: the shadow call spends its estimate there
    # before it starts (here the in-process store stands in for the shared one: same code path)
    from services.gateway.ratelimit import LimitStore, SharedBudget

    budget = 0.005
    s = Stack(tmp_path)
    s.explorer.budget = SharedBudget(budget, LimitStore())
    estimate = s.explorer.estimate_usd(WEAK, 10, 2)
    for _ in range(40):
        await s.ask()
        await s.settle()
    done = s.metric("switchyard_explore_calls_total", task="contracts", model=WEAK, outcome="accepted")
    assert 0 < done < 40 and done * estimate <= budget < (done + 1) * estimate
    assert s.metric("switchyard_explore_skipped_total", task="contracts", reason="budget") == 40 - done
    assert s.explorer.in_flight == 0  # a refused call gave its slot back


async def test_only_the_policys_candidates_are_shadowed_not_every_scored_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router scores every catalog model, but a task is calibrated for a few (an MMLU subject:
    GPT-4 and Mixtral). A cheaper model outside the policy's candidates (its ranking) would never
    be routed to for the task, so shadowing it gives no evidence: the shadow goes to the cheapest
    candidate."""
    from services.gateway.routing import RouteResult
    from services.gateway.testing import FakeRouter

    async def route(self: FakeRouter, req) -> RouteResult:  # noqa: ANN001
        scores = {STRONG: 0.95, WEAK: 0.9, "mistralai/mistral-7b-chat": 0.5}
        return RouteResult(scores, "v-test", STRONG, [STRONG, WEAK], 0.1, 0.05, low_margin=False)

    monkeypatch.setattr(FakeRouter, "route", route)
    s = Stack(tmp_path)
    await s.ask()
    calls, _ = await s.events()
    [shadow] = shadows(calls)
    assert shadow.chosen_model == WEAK and s.upstream.calls == [STRONG, WEAK, JUDGE]


async def test_a_task_routed_cheaply_gets_no_shadow_calls(tmp_path: Path) -> None:
    s = Stack(tmp_path, choose=WEAK)
    for _ in range(10):
        await s.ask()
    calls, feedback = await s.events()
    assert shadows(calls) == [] and feedback == [] and s.upstream.calls == [WEAK] * 10
    assert s.metric("switchyard_explore_skipped_total", task="contracts", reason="not_candidate") == 10


async def test_a_task_becomes_a_candidate_only_past_min_requests_and_the_expensive_share(
    tmp_path: Path,
) -> None:
    s = Stack(tmp_path, explore_min_requests=4, explore_expensive_share=0.75)
    for _ in range(3):
        await s.ask()
    assert s.metric("switchyard_explore_skipped_total", task="contracts", reason="not_candidate") == 3
    await s.ask()  # 4 of 4 on the top tier
    calls, _ = await s.events()
    assert len(shadows(calls)) == 1
    s.router.choose = WEAK
    for _ in range(2):  # 4 of 6 on the top tier: under 0.75
        await s.ask()
    calls, _ = await s.events()
    assert len(shadows(calls)) == 1


async def test_passthrough_calls_are_not_explored(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    await s.ask(model=STRONG)
    calls, _ = await s.events()
    assert shadows(calls) == [] and s.upstream.calls == [STRONG]


async def test_a_failing_shadow_upstream_never_reaches_the_client_and_is_counted(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    s.upstream.fail.add(WEAK)
    r = await s.ask()
    assert r.json()["model"] == STRONG
    calls, feedback = await s.events()
    [shadow] = shadows(calls)
    assert (
        shadow.status == "error"
        and shadow.chosen_model is None
        and shadow.shadow_of == r.headers["x-switchyard-request-id"]
    )
    assert STRONG not in [a.model for a in shadow.attempts]  # no fallback to the expensive tier
    assert feedback == [] and JUDGE not in s.upstream.calls
    assert s.metric("switchyard_explore_calls_total", task="contracts", model=WEAK, outcome="error") == 1
    assert s.explorer.in_flight == 0


async def test_a_crashing_shadow_is_logged_counted_and_releases_its_reservation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Stack(tmp_path)

    async def broken(question: str, answer: str):
        raise RuntimeError("judge exploded")

    monkeypatch.setattr(s.explorer.judge, "grade", broken)
    r = await s.ask()
    assert r.status_code == 200
    await s.settle()
    assert s.metric("switchyard_explore_calls_total", task="contracts", model=WEAK, outcome="crashed") == 1
    assert s.explorer.in_flight == 0 and s.explorer.spent_usd("contracts") == pytest.approx(
        CATALOG.model(WEAK).price.cost(10, 2)
    )


async def test_busy_skips_instead_of_queueing(tmp_path: Path) -> None:
    s = Stack(tmp_path, explore_max_concurrency=1)
    s.upstream.delay[WEAK] = 0.5
    await s.ask()
    await s.ask()
    assert s.metric("switchyard_explore_skipped_total", task="contracts", reason="busy") == 1
    await s.settle()


async def test_metrics_show_exploration_calls_and_spend(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    await s.ask()
    await s.settle()
    text = (await s.client.get("/metrics")).text
    assert (
        'switchyard_explore_calls_total{model="mistralai/Mixtral-8x7B-Instruct-v0.1",outcome="accepted",'
        'task="contracts"} 1.0' in text
    )
    assert 'switchyard_explore_spend_usd_total{task="contracts"}' in text
    # exploration spend is its own: the client's cost counter holds only the client's call
    cost = s.metric("switchyard_cost_usd_total", model=STRONG, tier="frontier", task="contracts")
    assert cost == pytest.approx(CATALOG.model(STRONG).price.cost(10, 2))
    assert s.metric("switchyard_cost_usd_total", model=WEAK, tier="budget", task="contracts") == 0


async def test_exploration_can_be_switched_off(tmp_path: Path) -> None:
    upstream, router = Upstream(), FakeRouter(STRONG)
    pool = ProviderPool(CATALOG, adapters=mock_adapters(CATALOG, httpx.MockTransport(upstream)))
    gw = build_gateway(
        GatewaySettings(explore_enabled=False, events_enabled=False),
        router.route,
        router.status,
        catalog=CATALOG,
        pool=pool,
    )
    assert gw.service.explorer is None
    gw = build_gateway(
        GatewaySettings(judge_model=None, events_enabled=False),
        router.route,
        router.status,
        catalog=CATALOG,
        pool=pool,
    )
    assert gw.service.explorer is None  # nothing could label the shadow answers


def test_the_budget_is_the_gateways_split_across_ingress_replicas() -> None:
    cfg = explore_config(GatewaySettings(ingress_replicas=4, explore_budget_usd_per_task_hour=1.0))
    assert cfg.budget_usd_per_task_hour == pytest.approx(0.25) and cfg.enabled and cfg.share == 0.05


def test_the_shadow_model_is_the_cheapest_scored_model_below_the_routed_tier() -> None:
    ex = Explorer(CATALOG, ExploreConfig(), judge=None)
    scored = [STRONG, WEAK, "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat", "claude-v2"]
    assert ex.shadow_model(STRONG, scored) == "mistralai/mistral-7b-chat"
    assert ex.shadow_model(STRONG, scored, tried=["mistralai/mistral-7b-chat"]) == WEAK
    assert ex.shadow_model("gpt-3.5-turbo-1106", scored) == "mistralai/mistral-7b-chat"
    assert ex.shadow_model(WEAK, scored) is None  # nothing below the cheapest tier
    assert ex.shadow_model(STRONG, ["claude-v2"]) is None


def test_cascade_rungs_already_tried_are_not_shadowed_again() -> None:
    ex = Explorer(CATALOG, ExploreConfig(min_requests=1, share=1.0), judge=None)
    assert ex.consider("t", STRONG, [STRONG, WEAK], tried=[WEAK, STRONG]) == "no_cheaper"


def test_clients_cannot_send_explore_feedback() -> None:
    with pytest.raises(ValueError, match="explore"):
        FeedbackRequest(request_id="r", score=1.0, source="explore")

"""The router runtime: atomic hot swap that keeps the old model on any failure; batch decisions."""

from __future__ import annotations

import pytest

from services.catalog import load_catalog
from services.gateway.routing import RouteRequest, RouterLoadFailed, RouterRuntime
from services.router.policy import PolicyError, ScoreRatioPolicy

CATALOG = load_catalog()
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


class FakeRouter:
    def __init__(self, version: str, weak: float = 0.9, bad: bool = False):
        self.version = version
        self.weak = weak
        self.bad = bad

    @property
    def models(self) -> list[str]:
        return [STRONG, WEAK]

    def scores(self, queries):
        if self.bad:
            return [{STRONG: 1.7, WEAK: 0.2} for _ in queries]
        return [{STRONG: 0.95, WEAK: self.weak} for _ in queries]


def loader(ref: str):
    if ref == "missing":
        raise RouterLoadFailed("no such model")
    if ref == "broken":
        return FakeRouter("v-broken", bad=True)
    return FakeRouter(ref, weak=0.5 if ref == "v2" else 0.9)


def test_swap_is_atomic_and_keeps_the_old_router_on_failure() -> None:
    rt = RouterRuntime(CATALOG, loader)
    with pytest.raises(RouterLoadFailed):
        rt.route([RouteRequest("hi", None, 0.9)])
    assert rt.swap("v1") and rt.status.version == "v1"
    assert not rt.swap("missing") and rt.status.version == "v1" and "no such model" in rt.status.last_error
    assert not rt.swap("broken") and rt.status.version == "v1"  # fails our smoke check
    assert rt.status.failed_swaps == 2
    [r] = rt.route([RouteRequest("What is 2+2?", "gsm8k", 0.9)])
    assert r.router_version == "v1" and r.model == WEAK  # 0.9 >= 0.9 * 0.95
    assert rt.swap("v2") and rt.status.history == ["v1", "v2"]
    [r] = rt.route([RouteRequest("What is 2+2?", "gsm8k", 0.9)])
    assert r.router_version == "v2" and r.model == STRONG and r.ranking[0] == STRONG


def test_one_bad_request_does_not_fail_its_batch() -> None:
    rt = RouterRuntime(CATALOG, loader)
    rt.swap("v1")
    out = rt.route([RouteRequest("a", None, 0.9), RouteRequest("b", None, 0.9, candidates=["nope"])])
    assert out[0].model == WEAK and isinstance(out[1], Exception)


def test_simple_policy_respects_cost_cap_and_candidates() -> None:
    scores = {STRONG: 0.95, WEAK: 0.94, "gpt-3.5-turbo-1106": 0.95}
    policy = ScoreRatioPolicy(CATALOG)
    r = policy.decide(scores, None, 0.99)
    assert r.model == "gpt-3.5-turbo-1106"  # cheapest reaching 0.99 * 0.95
    assert r.rule == "ratio" and not r.task_calibrated
    assert policy.decide(scores, None, 0.99, candidates=[STRONG, WEAK]).model == STRONG
    # a cap no candidate over the line meets keeps the line: the cap never lowers quality here
    assert policy.decide(scores, None, 0.99, max_cost_usd=1e-9).model == "gpt-3.5-turbo-1106"
    with pytest.raises(PolicyError):
        policy.decide(scores, None, 0.99, candidates=["not-scored"])


def test_uncalibrated_router_is_served_by_the_ratio_policy() -> None:
    rt = RouterRuntime(CATALOG, lambda ref: FakeRouter(ref, weak=0.99))
    rt.swap("v1")
    [r] = rt.route([RouteRequest("q", None, 0.9, request_id="req_x")])
    assert r.model == WEAK and r.reason == "cheapest over target × strong"


def test_reasoning_switch_only_for_hard_queries() -> None:
    from services.contracts.api import ChatCompletionRequest, SwitchyardKnobs
    from services.gateway.auth import Caller
    from services.gateway.metrics import GatewayMetrics
    from services.gateway.routing import RouteResult
    from services.gateway.service import ChatService
    from services.providers.pool import ProviderPool

    raw = CATALOG.model_dump()
    for m in raw["models"]:
        m["reasoning_switch"] = m["id"] == WEAK
    catalog = type(CATALOG).model_validate(raw)
    svc = ChatService(catalog, ProviderPool(catalog, adapters={}), None, None, GatewayMetrics())  # type: ignore[arg-type]
    req = ChatCompletionRequest.model_validate(
        {
            "model": "switchyard/auto",
            "messages": [{"role": "user", "content": "x"}],
            "reasoning_effort": "high",
        }
    )

    def payload(margin: float, low: bool, model: str = WEAK) -> dict:
        ctx = svc.context(req, SwitchyardKnobs(), Caller("k"), "r1")
        ctx.model = model
        ctx.route = RouteResult({WEAK: 0.5}, "v", model, [model], 0.1, margin, low)
        p = req.upstream_payload()
        svc._gate_reasoning(ctx, p)
        return p

    assert payload(0.0, True).get("reasoning_effort") == "high"  # hard: on
    assert "reasoning_effort" not in payload(0.5, False)  # easy: off, even if the client asked
    assert "reasoning_effort" not in payload(0.0, True, model=STRONG)  # no switch on this model


def test_a_restarted_replica_restores_the_last_good_router_when_the_new_one_is_corrupt(tmp_path) -> None:
    from pathlib import Path

    def dir_loader(ref: str):
        p = Path(ref)
        if not (p / "v").exists():
            raise RouterLoadFailed(f"{ref} is corrupt")
        r = FakeRouter((p / "v").read_text())
        r.path = p
        return r

    good = tmp_path / "good"
    good.mkdir()
    (good / "v").write_text("v1")
    rt = RouterRuntime(CATALOG, dir_loader, last_good=tmp_path / "cache")
    assert rt.swap(str(good))
    good.joinpath("v").unlink()  # the registry's copy is gone or corrupt now
    restarted = RouterRuntime(CATALOG, dir_loader, last_good=tmp_path / "cache")
    assert not restarted.swap(str(good))
    assert restarted.router is not None and restarted.status.restored == "v1"
    [r] = restarted.route([RouteRequest("q", None, 0.9)])
    assert r.router_version == "v1"
    (good / "v").write_text("v2")
    assert restarted.swap(str(good)) and restarted.status.restored is None
    assert (tmp_path / "cache" / "CURRENT").read_text() == "v2" and not (tmp_path / "cache" / "v1").exists()

"""Budgets and model allowlists per key and tenant (issue 20, part 4), in-process through the HTTP
surface with a fake clock: day and month windows, tokens per minute, the OpenAI-style 429 and 403
bodies, reconciliation with the actual cost, the router's candidates restricted to an allowlist,
config validation. Across replicas with a real redis: tests/integration/test_fleet_metrics_serve.py."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from services.catalog import load_catalog
from services.gateway.app import create_app
from services.gateway.budgets import BudgetConfig, micro_usd, period
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import FakeRouter, fake_gateway

CATALOG = load_catalog()
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
KEY, OTHER_KEY = "sk-budget-a", "sk-budget-b"
KEY_ID, OTHER_ID = hash_key(KEY)[:12], hash_key(OTHER_KEY)[:12]


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, at: str):
        self.now = ts(at)

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, budgets: dict, clock: Clock | None = None, **settings):
    router = FakeRouter()
    s = GatewaySettings(
        api_key_hashes=[hash_key(KEY), hash_key(OTHER_KEY)],
        state_dir=tmp_path,
        budgets=budgets,
        explore_enabled=False,
        **settings,
    )
    gw, upstream, broker = fake_gateway(s, router, CATALOG, tmp_path / "spool")
    if clock is not None:
        gw.service.budgets.clock = clock
    app = httpx.ASGITransport(app=create_app(gw))
    a, b = (
        httpx.AsyncClient(transport=app, base_url="http://gw", headers={"authorization": f"Bearer {k}"})
        for k in (KEY, OTHER_KEY)
    )
    return a, b, upstream, router, broker, gw


def ask(model: str = WEAK, max_tokens: int | None = 100, **kw) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "What is 2+2?"}], **kw}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def spend_until_refused(client, gw, limit: int = 500) -> tuple[list[float], httpx.Response]:
    """Requests one after the other until one is refused: the costs answered, and the refusal."""
    costs = []
    for _ in range(limit):
        r = await client.post("/v1/chat/completions", json=ask())
        await gw.service.budgets.drain()
        if r.status_code != 200:
            return costs, r
        costs.append(float(r.headers["x-switchyard-cost-usd"]))
    raise AssertionError(f"no refusal within {limit} requests")


# -- windows and units ------------------------------------------------------------------------------


def test_periods_are_utc_calendar_days_months_and_clock_minutes() -> None:
    assert period("usd_per_day", ts("2026-12-02T23:59:59")) == ("2026-12-02", ts("2026-12-03T00:00:00"))
    assert period("usd_per_month", ts("2026-12-31T12:00:00")) == ("2026-12", ts("2027-01-01T00:00:00"))
    assert period("usd_per_month", ts("2028-02-29T01:00:00")) == ("2028-02", ts("2028-03-01T00:00:00"))
    pid, ends = period("tokens_per_minute", ts("2026-12-02T10:15:42"))
    assert ends == ts("2026-12-02T10:16:00") and pid != period("tokens_per_minute", ends)[0]
    assert micro_usd(0.000024) == 24 and micro_usd(2.5e-7) == 1 and micro_usd(0.0) == 0


# -- configuration ----------------------------------------------------------------------------------


def test_keys_are_named_by_id_or_hash_and_broken_config_names_the_field(tmp_path) -> None:
    cfg = BudgetConfig.model_validate(
        {"keys": {hash_key(KEY): {"usd_per_day": 1}, OTHER_ID.upper(): {"usd_per_month": 2}, "*": {}}}
    )
    assert set(cfg.keys) == {KEY_ID, OTHER_ID, "*"}
    with pytest.raises(ValueError, match="first 12 hex characters"):
        BudgetConfig.model_validate({"keys": {"sk-plain-key": {}}})
    with pytest.raises(ValueError, match="configured twice"):
        BudgetConfig.model_validate({"keys": {KEY_ID: {}, hash_key(KEY): {}}})
    with pytest.raises(ValueError, match=r"budgets\.tenants\.acme\.usd_per_day"):
        GatewaySettings(budgets={"tenants": {"acme": {"usd_per_day": -1}}})
    with pytest.raises(ValueError, match=r"budgets\.keys\.\*\.usd_per_week"):
        GatewaySettings(budgets={"keys": {"*": {"usd_per_week": 1}}})
    # a model the catalog does not list fails at start, naming where
    with pytest.raises(ValueError, match=rf"keys\.{KEY_ID}\.models: 'gpt-5'"):
        make(tmp_path, {"keys": {KEY_ID: {"models": [WEAK, "gpt-5"]}}})


def test_the_budgets_file_is_yaml_and_its_errors_name_file_and_field(tmp_path, monkeypatch) -> None:
    good = tmp_path / "budgets.yaml"
    good.write_text(f"keys:\n  {KEY_ID}: {{usd_per_day: 0.5, models: ['{WEAK}']}}\ntenants:\n  acme: {{}}\n")
    monkeypatch.setenv("SWITCHYARD_GATEWAY_BUDGETS_FILE", str(good))
    s = GatewaySettings()
    assert s.budgets is not None and s.budgets.keys[KEY_ID].usd_per_day == 0.5
    # the resolved settings (what `switchyard serve` hands the replicas) validate again
    assert GatewaySettings(**s.model_dump(mode="json")).budgets == s.budgets
    bad = tmp_path / "bad.yaml"
    bad.write_text("keys:\n  '*': {tokens_per_minute: lots}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: keys\.\*\.tokens_per_minute"):
        GatewaySettings(budgets_file=bad)
    with pytest.raises(ValueError, match="cannot read"):
        GatewaySettings(budgets_file=tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="one of budgets and budgets_file"):
        GatewaySettings(budgets_file=good, budgets={"tenants": {"other": {}}})


# -- dollar budgets ---------------------------------------------------------------------------------


async def test_a_spent_daily_budget_is_a_429_naming_it_until_utc_midnight(tmp_path) -> None:
    clock = Clock("2026-12-02T18:00:00")
    a, b, upstream, _, broker, gw = make(tmp_path, {"keys": {KEY_ID: {"usd_per_day": 0.0001}}}, clock)
    costs, refused = await spend_until_refused(a, gw)
    # each call reserves (prompt bound + max_tokens) at its price, settles to its actual cost
    # (counted in whole micro-dollars, rounded up): the budget is used up to less than one
    # reservation, never past it
    reservation = micro_usd(CATALOG.model(WEAK).price.cost(12, 100))
    assert 100 - reservation < sum(map(micro_usd, costs)) <= 100 and sum(costs) <= 0.0001
    assert refused.status_code == 429
    err = refused.json()["error"]
    assert err["type"] == "insufficient_quota" and err["code"] == "budget_exceeded"
    assert f"daily budget of API key {KEY_ID}" in err["message"] and "2026-12-03T00:00:00Z" in err["message"]
    assert refused.headers["retry-after"] == str(6 * 3600)
    assert refused.headers["x-switchyard-budget"] == "key/usd_per_day"
    calls_before = len(upstream.calls)
    assert (await a.post("/v1/chat/completions", json=ask())).status_code == 429
    assert len(upstream.calls) == calls_before  # refused before any upstream call
    # another key has no budget of its own
    assert (await b.post("/v1/chat/completions", json=ask())).status_code == 200
    # the refusal is a call event with the error, and a metric by scope
    await asyncio.sleep(0)
    assert await gw.service.emitter.flush(5)
    events = [json.loads(v) for _, _, v in broker.log]
    refusals = [e for e in events if e["status"] == "error"]
    assert len(refusals) == 2 and all("daily budget" in e["error"] for e in refusals)
    assert refusals[0]["cost_usd"] == 0 and refusals[0]["attempts"] == []
    text = (await a.get("/metrics")).text
    assert 'switchyard_budget_rejections_total{limit="usd_per_day",scope="key"} 2.0' in text
    # a new UTC day: a new budget
    clock.now = ts("2026-12-03T00:00:01")
    assert (await a.post("/v1/chat/completions", json=ask())).status_code == 200


async def test_a_monthly_tenant_budget_is_shared_by_its_keys_and_outlives_the_day(tmp_path) -> None:
    clock = Clock("2026-11-30T23:00:00")
    a, b, _, _, _, gw = make(
        tmp_path,
        {"tenants": {"acme": {"usd_per_month": 0.0001}}},
        clock,
        key_tenants={hash_key(KEY): "acme", hash_key(OTHER_KEY): "acme"},
    )
    spent = 0.0
    for i in range(200):  # both keys of the tenant spend its one budget
        r = await (a if i % 2 else b).post("/v1/chat/completions", json=ask())
        await gw.service.budgets.drain()
        if r.status_code != 200:
            break
        spent += float(r.headers["x-switchyard-cost-usd"])
    assert r.status_code == 429 and spent <= 0.0001
    assert "monthly budget of tenant 'acme'" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "3600"  # 1 December, 00:00 UTC
    clock.now = ts("2026-12-01T00:00:00")
    assert (await a.post("/v1/chat/completions", json=ask())).status_code == 200


async def test_reservations_settle_to_the_actual_cost_and_hold_under_concurrency(tmp_path) -> None:
    a, _, upstream, _, _, gw = make(tmp_path, {"keys": {"*": {"usd_per_day": 0.0002}}})
    upstream.delay[WEAK] = 0.02
    # 60 at once against room for ~7 reservations: in-flight reservations hold the rest back
    answers = await asyncio.gather(*(a.post("/v1/chat/completions", json=ask()) for _ in range(60)))
    await gw.service.budgets.drain()
    ok = [r for r in answers if r.status_code == 200]
    spent = sum(float(r.headers["x-switchyard-cost-usd"]) for r in ok)
    assert ok and len(ok) < 60 and spent <= 0.0002
    # once settled the store holds the actual spend (micro-USD, rounded up per call), not the
    # reservations: the room they held is back
    store = gw.service.budgets.store
    (counter,) = gw.service.budgets.counters(gw.keys.authenticate(f"Bearer {KEY}"))
    counted = sum(micro_usd(float(r.headers["x-switchyard-cost-usd"])) for r in ok)
    assert await store.incr(counter.key, 0, 60) == counted
    assert (await a.post("/v1/chat/completions", json=ask())).status_code == 200


async def test_a_request_larger_than_the_whole_budget_says_so_without_retry_after(tmp_path) -> None:
    a, b, upstream, *_ = make(
        tmp_path, {"keys": {KEY_ID: {"usd_per_day": 0.002}}}, budget_completion_tokens=20
    )
    r = await a.post("/v1/chat/completions", json=ask(STRONG, max_tokens=4000))
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert "more than the whole daily budget" in r.json()["error"]["message"]
    assert (await a.post("/v1/chat/completions", json=ask(STRONG, max_tokens=10))).status_code == 200
    # without max_tokens a budgeted key's request reserves BUDGET_COMPLETION_TOKENS and is held
    # to them upstream; a key without limits sends what its client sent
    assert (await a.post("/v1/chat/completions", json=ask(STRONG, max_tokens=None))).status_code == 200
    assert upstream.bodies[-1]["max_tokens"] == 20
    assert (await b.post("/v1/chat/completions", json=ask(STRONG, max_tokens=None))).status_code == 200
    assert "max_tokens" not in upstream.bodies[-1]


# -- tokens per minute ------------------------------------------------------------------------------


async def test_tokens_per_minute_is_a_429_rate_limit_until_the_next_minute(tmp_path) -> None:
    clock = Clock("2026-12-02T10:15:45")
    a, _, _, _, _, gw = make(tmp_path, {"keys": {KEY_ID: {"tokens_per_minute": 300}}}, clock)
    codes = []
    for _ in range(30):
        r = await a.post("/v1/chat/completions", json=ask())
        await gw.service.budgets.drain()
        codes.append(r.status_code)
        if r.status_code != 200:
            break
    # each call reserves 12 + 100 tokens, uses 12 (the upstream's count): 300 admit far more than 2
    assert codes[-1] == 429 and 15 <= codes.count(200) <= 25, codes
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert f"tokens-per-minute limit of API key {KEY_ID}" in err["message"]
    assert r.headers["retry-after"] == "15" and r.headers["x-ratelimit-limit-tokens"] == "300"
    clock.now = ts("2026-12-02T10:16:00")
    assert (await a.post("/v1/chat/completions", json=ask())).status_code == 200
    too_big = await a.post("/v1/chat/completions", json=ask(max_tokens=1000))
    assert too_big.status_code == 429 and "request too large" in too_big.json()["error"]["message"]


# -- allowlists -------------------------------------------------------------------------------------


async def test_a_model_outside_the_allowlist_is_a_403_and_listed_nowhere(tmp_path) -> None:
    a, b, upstream, _, broker, gw = make(tmp_path, {"keys": {KEY_ID: {"models": [WEAK]}}})
    r = await a.post("/v1/chat/completions", json=ask(STRONG))
    err = r.json()["error"]
    assert r.status_code == 403 and err["code"] == "model_not_allowed" and err["param"] == "model"
    assert STRONG in err["message"] and WEAK in err["message"]
    assert upstream.calls == []
    assert (await b.post("/v1/chat/completions", json=ask(STRONG))).status_code == 200  # not b's list
    listed = [m["id"] for m in (await a.get("/v1/models")).json()["data"]]
    assert listed == [CATALOG.routing_model, WEAK]
    assert (await a.get(f"/v1/models/{STRONG}")).status_code == 404
    assert len((await b.get("/v1/models")).json()["data"]) == len(CATALOG.models) + 1
    # a fallback the key may not use is not called either: the allowed model's failure is a 502
    upstream.fail.add(WEAK)
    upstream.calls.clear()
    r = await a.post("/v1/chat/completions", json=ask(WEAK))
    assert r.status_code == 502 and STRONG not in upstream.calls and CATALOG.model(WEAK).fallbacks == [STRONG]
    assert await gw.service.emitter.flush(5)
    (refusal,) = [json.loads(v) for _, _, v in broker.log if b"not in the model allowlist" in v]
    assert refusal["requested_model"] == STRONG and refusal["status"] == "error"


async def test_auto_routes_only_among_the_allowlisted_models(tmp_path) -> None:
    a, _, upstream, router, _, _ = make(tmp_path, {"keys": {KEY_ID: {"models": [STRONG]}}})
    # the fake router picks the weak model, whatever it is told: the allowlist still holds
    r = await a.post("/v1/chat/completions", json=ask(CATALOG.routing_model))
    assert r.status_code == 200 and r.headers["x-switchyard-model"] == STRONG
    assert upstream.calls == [STRONG]
    assert WEAK in router.seen[-1].exclude and STRONG not in router.seen[-1].exclude
    # a cascade climbs only allowlisted rungs
    await a.post("/v1/chat/completions", json=ask(CATALOG.routing_model, switchyard={"mode": "cascade"}))
    assert set(upstream.calls) == {STRONG}


async def test_an_empty_allowlist_leaves_no_candidate_and_the_tenants_list_applies_too(tmp_path) -> None:
    a, b, upstream, *_ = make(
        tmp_path,
        {"keys": {KEY_ID: {"models": []}}, "tenants": {"acme": {"models": [WEAK]}}},
        key_tenants={hash_key(OTHER_KEY): "acme"},
    )
    r = await a.post("/v1/chat/completions", json=ask(CATALOG.routing_model))
    assert r.status_code == 403 and "none of the candidate models" in r.json()["error"]["message"]
    assert (await a.get("/v1/models")).json()["data"] == []
    r = await b.post("/v1/chat/completions", json=ask(STRONG))
    assert r.status_code == 403 and "tenant 'acme'" in r.json()["error"]["message"]
    assert (await b.post("/v1/chat/completions", json=ask(CATALOG.routing_model))).status_code == 200
    assert upstream.calls == [WEAK]


async def test_a_streamed_call_settles_when_its_stream_ends(tmp_path) -> None:
    a, _, _, _, broker, gw = make(tmp_path, {"keys": {KEY_ID: {"usd_per_month": 1.0}}})
    async with a.stream("POST", "/v1/chat/completions", json=ask(stream=True)) as r:
        assert r.status_code == 200
        assert [line async for line in r.aiter_lines() if line.startswith("data:")][-1] == "data: [DONE]"
    await gw.service.budgets.drain()
    assert await gw.service.emitter.flush(5)
    (call,) = [json.loads(v) for _, _, v in broker.log]
    (counter,) = gw.service.budgets.counters(gw.keys.authenticate(f"Bearer {KEY}"))
    assert call["cost_usd"] > 0 and await gw.service.budgets.store.incr(counter.key, 0, 60) == micro_usd(
        call["cost_usd"]
    )

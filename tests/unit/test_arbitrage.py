"""Provider arbitrage: the catalog's offers, the order the pool tries them (price, open breaker,
slowness), failover along it over real httpx adapters with an in-process transport, and each
attempt naming and priced at the provider that served it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import yaml

from services.catalog import Catalog, CatalogError, Offer, Price, load_catalog
from services.errors import UpstreamRejectedRequest
from services.gateway.testing import chunk, completion, sse
from services.providers.arbitrage import ArbitragePolicy, LatencyBoard, order_offers
from services.providers.breaker import BreakerPolicy, BreakerState
from services.providers.openai import OpenAIAdapter
from services.providers.pool import ProviderPool, RetryPolicy

MODEL = "open/model-70b"
BACKUP = "closed/model-x"
MSGS = {"messages": [{"role": "user", "content": "What is 2+2?"}]}


def _catalog_doc() -> dict:
    return {
        "providers": [
            {"name": "listed", "base_url": "http://listed/v1", "max_retries": 2},
            {"name": "cheap", "base_url": "http://cheap/v1", "max_retries": 2},
            {"name": "mid", "base_url": "http://mid/v1", "max_retries": 2},
        ],
        "tiers": ["budget", "frontier"],
        "strong_model": BACKUP,
        "default_model": MODEL,
        "models": [
            {
                "id": MODEL,
                "provider": "listed",
                "tier": "budget",
                "price": {"input": 0.9, "output": 0.9},
                "fallbacks": [BACKUP],
                "offers": [
                    {"provider": "cheap", "price": {"input": 0.3, "output": 0.5}, "upstream_model": "m70b"},
                    {"provider": "mid", "price": {"input": 0.6, "output": 0.6}},
                ],
            },
            {"id": BACKUP, "provider": "listed", "tier": "frontier", "price": {"input": 10, "output": 30}},
        ],
    }


CATALOG = Catalog.model_validate(_catalog_doc())


class Upstreams:
    """Scripted providers, told apart by host: each a list of handlers used in turn (the last
    repeats); every call is logged as (provider, upstream model)."""

    def __init__(self, **script):
        self.script = script
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        host = request.url.host
        self.calls.append((host, body["model"]))
        handlers = self.script.get(host, [ok])
        n = sum(1 for h, _ in self.calls if h == host)
        result = handlers[min(n, len(handlers)) - 1](body)
        return await result if asyncio.iscoroutine(result) else result


def ok(body: dict) -> httpx.Response:
    if body.get("stream"):
        content = sse([chunk(body["model"], "2+2="), chunk(body["model"], "4", "stop")])
        return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json=completion(body["model"]))


def fail(code: int):
    return lambda body: httpx.Response(code, json={"error": {"message": f"boom {code}"}})


def pool_for(up: Upstreams, **kw) -> ProviderPool:
    transport = httpx.MockTransport(up)
    adapters = {p.name: OpenAIAdapter(p, transport=transport) for p in CATALOG.providers}
    kw.setdefault("retry", RetryPolicy(initial_s=0.001, max_s=0.01, jitter_s=0.001))
    return ProviderPool(CATALOG, adapters=adapters, **kw)


# -- the catalog ----------------------------------------------------------------------------------


def test_offers_resolve_names_and_a_single_provider_model_is_one_offer() -> None:
    offers = CATALOG.model(MODEL).all_offers
    assert [(o.provider, o.upstream_model) for o in offers] == [
        ("listed", MODEL),
        ("cheap", "m70b"),
        ("mid", MODEL),
    ]
    assert CATALOG.offer(MODEL, "cheap").price.input == 0.3
    assert [o.provider for o in CATALOG.model(BACKUP).all_offers] == ["listed"]
    with pytest.raises(KeyError):
        CATALOG.offer(BACKUP, "cheap")
    # the listed price stays what routing ranks by
    assert CATALOG.blended_price(MODEL) == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("offers", "error"),
    [
        ([{"provider": "nowhere", "price": {"input": 1, "output": 1}}], r"unknown provider 'nowhere'"),
        ([{"provider": "listed", "price": {"input": 1, "output": 1}}], r"more than one offer from the same"),
        (
            [{"provider": "cheap", "price": {"input": 1, "output": 1}}] * 2,
            r"more than one offer from the same",
        ),
        ([{"provider": "cheap", "price": {"input": -1, "output": 1}}], r"models\.0\.offers\.0\.price\.input"),
        ([{"provider": "cheap"}], r"models\.0\.offers\.0\.price"),
    ],
    ids=["unknown-provider", "same-as-listed", "duplicate", "negative-price", "no-price"],
)
def test_invalid_offers_are_named(tmp_path: Path, offers: list, error: str) -> None:
    doc = _catalog_doc()
    doc["models"][0]["offers"] = offers
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CatalogError, match=error):
        load_catalog(path)


def test_every_seller_of_a_model_speaks_one_protocol(tmp_path: Path) -> None:
    """Whether a request's parameters can be honoured is checked per protocol kind, so an
    Anthropic seller of an OpenAI-listed model could turn an answerable request into a 400."""
    doc = _catalog_doc()
    doc["providers"].append({"name": "anth", "kind": "anthropic", "base_url": "http://anth"})
    doc["models"][0]["offers"] = [{"provider": "anth", "price": {"input": 0.1, "output": 0.1}}]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CatalogError, match=r"different protocols \['anthropic', 'openai'\]"):
        load_catalog(path)


def test_builtin_catalog_sells_two_open_models_twice_at_unchanged_listed_prices() -> None:
    cat = load_catalog()
    multi = {m.id: [o.provider for o in m.all_offers] for m in cat.models if len(m.all_offers) > 1}
    assert multi == {
        "meta/llama-2-70b-chat": ["emulator-openai", "emulator-budgetcloud"],
        "mistralai/mixtral-8x7b-chat": ["emulator-openai", "emulator-budgetcloud"],
    }
    assert cat.model("mistralai/mixtral-8x7b-chat").price == Price(input=0.6, output=0.6)
    assert cat.provider("emulator-budgetcloud").base_url.endswith("/p/emulator-budgetcloud/v1")


# -- the ordering rule ----------------------------------------------------------------------------


def _offer(provider: str, price: float) -> Offer:
    return Offer(provider=provider, price=Price(input=price, output=price))


A, B, C = _offer("a", 0.9), _offer("b", 0.3), _offer("c", 0.6)


def test_cheapest_first_then_an_open_breaker_last() -> None:
    policy = ArbitragePolicy()
    assert order_offers([A, B, C], policy, lambda o: False, lambda o: None) == [B, C, A]
    assert order_offers([A, B, C], policy, lambda o: o is B, lambda o: None) == [C, A, B]
    # ties keep catalog order
    same = _offer("d", 0.9)
    assert order_offers([A, same], policy, lambda o: False, lambda o: None) == [A, same]


def test_a_slow_offer_goes_after_the_others_only_when_far_and_clearly_slower() -> None:
    policy = ArbitragePolicy(slow_factor=3.0, slow_min_gap_s=0.5)
    never_open = lambda o: False  # noqa: E731
    lat = {"a": 0.4, "b": 2.0, "c": 0.5}
    assert order_offers([A, B, C], policy, never_open, lambda o: lat[o.provider]) == [C, A, B]
    lat = {"a": 0.01, "b": 0.2, "c": 0.01}  # 20x slower but only 0.19 s: noise, price order holds
    assert order_offers([A, B, C], policy, never_open, lambda o: lat[o.provider]) == [B, C, A]
    lat = {"a": 0.4, "b": 1.0, "c": 0.5}  # 2.5x: within the factor
    assert order_offers([A, B, C], policy, never_open, lambda o: lat[o.provider]) == [B, C, A]
    # an open breaker outranks slowness
    lat = {"a": 0.4, "b": 2.0, "c": 0.5}
    assert order_offers([A, B, C], policy, lambda o: o is C, lambda o: lat[o.provider]) == [A, B, C]


def test_latency_estimates_are_an_ewma_forgotten_after_their_ttl() -> None:
    now = [0.0]
    board = LatencyBoard(alpha=0.5, ttl_s=30, clock=lambda: now[0])
    assert board.estimate("k") is None
    board.record("k", 1.0)
    board.record("k", 3.0)
    assert board.estimate("k") == pytest.approx(2.0)
    now[0] = 31
    assert board.estimate("k") is None and board.snapshot() == {}
    board.record("k", 0.5)  # a fresh start, not blended with the forgotten value
    assert board.estimate("k") == pytest.approx(0.5)


# -- the pool -------------------------------------------------------------------------------------


async def test_the_cheapest_offer_serves_and_the_attempt_is_priced_at_its_price() -> None:
    up = Upstreams()
    attempts: list = []
    model, result = await pool_for(up).complete([MODEL], MSGS, attempts)
    assert model == MODEL and up.calls == [("cheap", "m70b")]
    [a] = attempts
    assert (a.provider, a.status) == ("cheap", "ok")
    assert a.cost_usd == pytest.approx((a.prompt_tokens * 0.3 + a.completion_tokens * 0.5) / 1e6)
    assert a.cost_usd > 0


async def test_a_failing_offer_fails_over_along_price_order_at_once() -> None:
    up = Upstreams(cheap=[fail(503)], mid=[fail(500)])
    attempts: list = []
    model, _ = await pool_for(up).complete([MODEL], MSGS, attempts)
    # no retry on an offer while another is left; the last offer keeps its retries
    assert model == MODEL and up.calls == [("cheap", "m70b"), ("mid", MODEL), ("listed", MODEL)]
    assert [(a.provider, a.status, a.http_status) for a in attempts] == [
        ("cheap", "error", 503),
        ("mid", "error", 500),
        ("listed", "ok", None),
    ]
    assert attempts[0].cost_usd == 0 and attempts[-1].cost_usd > 0


async def test_every_offer_failing_falls_back_to_the_next_model_after_retrying_the_last() -> None:
    up = Upstreams(cheap=[fail(500)], mid=[fail(500)], listed=[fail(500)])
    up.script["listed"] = [lambda b: fail(500)(b) if b["model"] == MODEL else ok(b)]
    attempts: list = []
    model, _ = await pool_for(up).complete([MODEL, BACKUP], MSGS, attempts)
    assert model == BACKUP
    assert [c for c in up.calls if c[1] != BACKUP] == [("cheap", "m70b"), ("mid", MODEL)] + [
        ("listed", MODEL)
    ] * 3
    assert attempts[-1].model == BACKUP and attempts[-1].status == "ok"


async def test_a_request_fault_is_a_400_without_trying_another_provider() -> None:
    up = Upstreams(cheap=[fail(400)])
    pool = pool_for(up)
    with pytest.raises(UpstreamRejectedRequest):
        await pool.complete([MODEL, BACKUP], MSGS, [])
    assert up.calls == [("cheap", "m70b")]
    assert pool.breaker(MODEL, "cheap").window() == (0, 0)  # not the upstream's fault


async def test_an_open_breaker_sends_traffic_to_the_next_price_until_it_recovers() -> None:
    now = [0.0]
    up = Upstreams(cheap=[fail(500)] * 3 + [ok])
    breaker = BreakerPolicy(failure_rate=1.0, min_calls=3, reset_timeout_s=10, half_open_probes=1)
    pool = pool_for(up, breaker=breaker, clock=lambda: now[0])
    for _ in range(3):
        await pool.complete([MODEL], MSGS, [])
    assert pool.breaker(MODEL, "cheap").state is BreakerState.OPEN
    assert pool.breaker(MODEL).state is BreakerState.CLOSED  # the listed offer's own breaker
    assert [o.provider for o in pool.offers(MODEL)] == ["mid", "listed", "cheap"]
    before = len(up.calls)
    attempts: list = []
    await pool.complete([MODEL], MSGS, attempts)
    assert up.calls[before:] == [("mid", MODEL)] and [a.provider for a in attempts] == ["mid"]
    now[0] = 11  # half-open: the cheap offer is back at the front, its probe succeeds
    attempts = []
    await pool.complete([MODEL], MSGS, attempts)
    assert [a.provider for a in attempts] == ["cheap"]
    assert pool.breaker(MODEL, "cheap").state is BreakerState.CLOSED
    assert set(pool.breaker_states()) == {
        "cheap/open/model-70b",
        "mid/open/model-70b",
        "listed/open/model-70b",
    }


async def test_a_slow_offer_is_tried_after_a_fast_one_until_its_estimate_expires() -> None:
    now = [0.0]

    async def slow(body: dict) -> httpx.Response:
        await asyncio.sleep(0.3)
        return ok(body)

    up = Upstreams(cheap=[slow, fail(500), slow])
    policy = ArbitragePolicy(slow_factor=3, slow_min_gap_s=0.2, latency_ttl_s=30)
    pool = pool_for(up, arbitrage=policy, clock=lambda: now[0])
    await pool.complete([MODEL], MSGS, [])  # cheap answers, slowly
    await pool.complete([MODEL], MSGS, [])  # cheap fails: mid answers, fast
    attempts: list = []
    await pool.complete([MODEL], MSGS, attempts)
    assert [a.provider for a in attempts] == ["mid"], pool.latency.snapshot()
    assert attempts[0].latency_ms < 200
    now[0] = 31  # the estimates expired: price order again
    assert [o.provider for o in pool.offers(MODEL)] == ["cheap", "mid", "listed"]


async def test_arbitrage_off_uses_the_listed_offer_only() -> None:
    up = Upstreams()
    attempts: list = []
    await pool_for(up, arbitrage=ArbitragePolicy(enabled=False)).complete([MODEL], MSGS, attempts)
    assert up.calls == [("listed", MODEL)] and attempts[0].provider == "listed"
    assert attempts[0].cost_usd == pytest.approx(
        CATALOG.model(MODEL).price.cost(attempts[0].prompt_tokens, attempts[0].completion_tokens)
    )


async def test_a_stream_failing_before_its_first_token_fails_over_to_the_next_provider() -> None:
    def cut(body: dict) -> httpx.Response:
        return httpx.Response(200, content=b"data: {oops\n\n", headers={"content-type": "text/event-stream"})

    up = Upstreams(cheap=[cut])
    attempts: list = []
    handle = await pool_for(up).stream([MODEL], {**MSGS, "stream": True}, attempts)
    chunks = [c async for c in handle.chunks]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "2+2=4" and up.calls == [("cheap", "m70b"), ("mid", MODEL)]
    assert [(a.provider, a.status) for a in attempts] == [("cheap", "error"), ("mid", "ok")]
    assert attempts[-1].cost_usd == pytest.approx(
        (attempts[-1].prompt_tokens * 0.6 + attempts[-1].completion_tokens * 0.6) / 1e6
    )


# -- the emulator's per-provider faults -------------------------------------------------------------


def test_emulator_faults_limited_to_one_provider_leave_the_others_alone() -> None:
    from infra.emulator.faults import FaultSpec, FaultTable

    table = FaultTable(seed=1)
    table.set("m", FaultSpec(error_rate=1.0, error_statuses=[503]), provider="cheap")
    assert table.decide("m", False, "cheap").status == 503
    assert table.decide("m", False, "listed").kind == "none"
    assert table.decide("m", False).kind == "none"  # the plain /v1 URL
    table.set("*", FaultSpec(error_rate=1.0, error_statuses=[500]))  # an outage of every model
    assert table.decide("m", False, "listed").status == 500 and table.decide("m", False).status == 500
    assert table.decide("m", False, "cheap").status == 503  # the provider's own rule wins
    assert set(table.snapshot()) == {"m@cheap", "*"}
    table.clear(provider="cheap")
    assert set(table.snapshot()) == {"*"}


async def test_the_emulator_sells_a_model_under_each_provider_prefix_at_that_offers_price() -> None:
    from infra.emulator.app import EmulatorApp
    from infra.emulator.core import Emulator
    from infra.emulator.corpus import Corpus

    catalog = load_catalog()
    app = EmulatorApp(Emulator(Corpus([]), catalog, speed=0))

    async def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": json.dumps(body or {}).encode(), "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
        await app(scope, receive, send)
        headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
        return sent[0]["status"], headers, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    llama = "meta/llama-2-70b-chat"
    status, _, body = await call("GET", "/p/emulator-budgetcloud/v1/models")
    assert status == 200 and {m["id"] for m in body["data"]} == {llama, "mistralai/mixtral-8x7b-chat"}
    ask = {"model": llama, "messages": [{"role": "user", "content": "hi there"}]}
    for path, seller in (("/p/emulator-budgetcloud/v1", "emulator-budgetcloud"), ("/v1", "emulator-openai")):
        status, headers, body = await call("POST", path + "/chat/completions", ask)
        u = body["usage"]
        price = catalog.offer(llama, seller).price
        assert status == 200
        assert float(headers["x-emulator-cost-usd"]) == pytest.approx(
            price.cost(u["prompt_tokens"], u["completion_tokens"])
        )
    status, _, body = await call(
        "POST", "/p/emulator-budgetcloud/v1/chat/completions", {**ask, "model": "gpt-4-1106-preview"}
    )
    assert status == 404 and "at emulator-budgetcloud" in body["error"]["message"]
    assert (await call("GET", "/p/nowhere/v1/models"))[0] == 404
    assert (await call("GET", "/p/emulator-budgetcloud/emulator/stats"))[0] == 404  # admin stays unprefixed

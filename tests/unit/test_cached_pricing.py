"""Cached-token pricing: the upstreams' cached-token counts parsed (OpenAI and Anthropic, whole
answers and streams), priced at the catalog's cached rates, carried by attempts, call events and
/metrics, and the router comparing candidates at a task's expected cached share."""

from __future__ import annotations

import json

import httpx
import pytest

from infra.emulator.prompt_cache import MIN_TOKENS, OPENAI_STEP, PromptCache
from services.catalog import Catalog, Price, load_catalog
from services.contracts.events import Attempt, CallEvent, RoutingMode, Usage, cache_usage
from services.gateway.metrics import GatewayMetrics
from services.gateway.sse import usage_chunk
from services.gateway.testing import chunk, completion, sse
from services.providers.anthropic import AnthropicAdapter
from services.providers.anthropic_translate import StreamTranslator, to_messages_request
from services.providers.base import StreamUsage
from services.providers.openai import OpenAIAdapter
from services.providers.pool import ProviderPool
from services.router.calibration import Calibration, ThresholdTable
from services.router.policy import RoutingPolicy, ScoreRatioPolicy, cascade_ladder

CATALOG = load_catalog()
GPT4 = "gpt-4-1106-preview"
CLAUDE = "claude-v2"
MSGS = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+2?"}]}
CACHED_USAGE = {
    "prompt_tokens": 2000,
    "completion_tokens": 100,
    "total_tokens": 2100,
    "prompt_tokens_details": {"cached_tokens": 1536},
}
ANTHROPIC_USAGE = {
    "input_tokens": 50,
    "output_tokens": 100,
    "cache_read_input_tokens": 1800,
    "cache_creation_input_tokens": 150,
}


def _openai(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if body.get("stream"):
        usage_only = {**chunk(body["model"], None), "choices": [], "usage": CACHED_USAGE}
        events = [chunk(body["model"], "4", "stop"), usage_only]
        return httpx.Response(200, content=sse(events), headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json={**completion(body["model"]), "usage": CACHED_USAGE})


def _anthropic_events(model: str) -> bytes:
    start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
    events = [
        {"type": "message_start", "message": {"id": "m1", "model": model, "usage": start_usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Four"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 100}},
        {"type": "message_stop"},
    ]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def _anthropic(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if body.get("stream"):
        return httpx.Response(
            200, content=_anthropic_events(body["model"]), headers={"content-type": "text/event-stream"}
        )
    msg = {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": "Four"}],
        "stop_reason": "end_turn",
        "usage": ANTHROPIC_USAGE,
    }
    return httpx.Response(200, json=msg)


def _pool() -> ProviderPool:
    adapters = {
        p.name: (
            AnthropicAdapter(p, transport=httpx.MockTransport(_anthropic))
            if p.kind == "anthropic"
            else OpenAIAdapter(p, transport=httpx.MockTransport(_openai))
        )
        for p in CATALOG.providers
    }
    return ProviderPool(CATALOG, adapters=adapters)


# -- prices -----------------------------------------------------------------------------------------


def test_price_bills_cache_reads_and_writes_at_their_rates() -> None:
    p = Price(input=8.0, output=24.0, cached_input=0.8, cache_write=10.0)
    # 1000 prompt tokens: 600 read, 300 written, 100 fresh; 10 completion tokens
    assert p.cost(1000, 10, 600, 300) == pytest.approx((100 * 8 + 600 * 0.8 + 300 * 10 + 10 * 24) / 1e6)
    assert p.cost(1000, 10) == pytest.approx((1000 * 8 + 10 * 24) / 1e6)
    no_rates = Price(input=8.0, output=24.0)  # a provider without cached rates bills them all at input
    assert no_rates.cost(1000, 10, 600, 300) == no_rates.cost(1000, 10)
    assert p.cost(100, 0, 500) == pytest.approx(100 * 0.8 / 1e6)  # never more cached than prompt


def test_catalog_has_the_providers_list_price_ratios() -> None:
    gpt4, claude = CATALOG.model(GPT4).price, CATALOG.model(CLAUDE).price
    assert gpt4.cached_input == pytest.approx(0.5 * gpt4.input) and gpt4.cache_write is None
    assert claude.cached_input == pytest.approx(0.1 * claude.input)
    assert claude.cache_write == pytest.approx(1.25 * claude.input)


# -- parsing, through the pool's real adapters ------------------------------------------------------


async def test_openai_cached_tokens_non_stream_and_stream_usage_chunk() -> None:
    pool = _pool()
    attempts: list[Attempt] = []
    _, result = await pool.complete([GPT4], MSGS, attempts)
    assert (result.prompt_tokens, result.cached_tokens, result.cache_write_tokens) == (2000, 1536, 0)
    price = CATALOG.model(GPT4).price
    expected = (464 * price.input + 1536 * price.cached_input + 100 * price.output) / 1e6
    assert attempts[-1].cached_tokens == 1536 and attempts[-1].cost_usd == pytest.approx(expected)
    assert attempts[-1].cost_usd < price.cost(2000, 100)

    handle = await pool.stream([GPT4], MSGS, attempts)
    [c async for c in handle.chunks]
    assert (handle.usage.prompt_tokens, handle.usage.cached_tokens) == (2000, 1536)
    assert attempts[-1].status == "ok" and attempts[-1].cost_usd == pytest.approx(expected)
    await pool.aclose()


async def test_anthropic_cache_counts_are_added_to_prompt_tokens_and_translated() -> None:
    pool = _pool()
    attempts: list[Attempt] = []
    _, result = await pool.complete([CLAUDE], MSGS, attempts)
    # input_tokens leaves out cached tokens; the gateway counts them in, as OpenAI does
    assert (result.prompt_tokens, result.cached_tokens, result.cache_write_tokens) == (2000, 1800, 150)
    usage = result.body["usage"]
    assert usage["prompt_tokens"] == 2000 and usage["total_tokens"] == 2100
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1800, "cache_write_tokens": 150}
    price = CATALOG.model(CLAUDE).price
    expected = (50 * 8.0 + 1800 * 0.8 + 150 * 10.0 + 100 * 24.0) / 1e6
    assert price.cost(2000, 100, 1800, 150) == pytest.approx(expected)
    assert attempts[-1].cost_usd == pytest.approx(expected)
    assert (attempts[-1].cached_tokens, attempts[-1].cache_write_tokens) == (1800, 150)

    handle = await pool.stream([CLAUDE], MSGS, attempts)
    [c async for c in handle.chunks]
    u = handle.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens) == (
        2000,
        100,
        1800,
        150,
    )
    assert attempts[-1].cost_usd == pytest.approx(expected)
    await pool.aclose()


def test_a_message_delta_with_final_input_counts_replaces_the_start_counts() -> None:
    usage = StreamUsage()
    t = StreamTranslator("claude-v2", usage)
    t.feed({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 10}}})
    t.feed(
        {
            "type": "message_delta",
            "delta": {},
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 1024, "output_tokens": 5},
        }
    )
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (1034, 1024, 5)


def test_cache_control_parts_reach_anthropic_blocks() -> None:
    mark = {"type": "ephemeral"}
    payload = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "long rules", "cache_control": mark}]},
            {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": mark}]},
        ]
    }
    body = to_messages_request(payload, "claude-v2")
    assert body["system"] == [{"type": "text", "text": "long rules", "cache_control": mark}]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "q", "cache_control": mark}]
    assert to_messages_request(MSGS, "claude-v2")["system"] == "be brief"  # unmarked: a plain string


# -- events and metrics -----------------------------------------------------------------------------


def test_call_event_carries_cache_tokens_and_reads_older_records() -> None:
    attempts = [
        Attempt(model=GPT4, provider="p", status="rejected", prompt_tokens=2000, cached_tokens=1024),
        Attempt(
            model=CLAUDE,
            provider="q",
            status="ok",
            prompt_tokens=2000,
            cached_tokens=1800,
            cache_write_tokens=150,
        ),
        Attempt(model=GPT4, provider="p", status="error", cached_tokens=999),  # not billed: not counted
    ]
    usage = Usage(prompt_tokens=4000, completion_tokens=10, **cache_usage(attempts))
    assert (usage.cached_tokens, usage.cache_write_tokens) == (2824, 150)
    event = CallEvent(
        request_id="r",
        prompt_hash="0" * 16,
        requested_model=GPT4,
        mode=RoutingMode.ROUTE,
        attempts=attempts,
        usage=usage,
    )
    again = CallEvent.from_bytes(event.to_bytes())
    assert again.usage.cached_tokens == 2824 and again.attempts[1].cache_write_tokens == 150
    old = json.loads(event.to_bytes())  # a record of a gateway before cached-token pricing
    for key in ("cached_tokens", "cache_write_tokens"):
        del old["usage"][key]
        for a in old["attempts"]:
            del a[key]
    assert CallEvent.from_bytes(json.dumps(old)).usage.cached_tokens == 0


def test_metrics_count_cache_reads_and_writes_by_model() -> None:
    m = GatewayMetrics()
    m.observe_cache(CLAUDE, "frontier", "default", 1800, 150)
    m.observe_cache(GPT4, "frontier", "default", 1024, 0)
    text = m.render().decode()
    assert (
        'switchyard_cached_tokens_total{kind="read",model="claude-v2",task="default",tier="frontier"} 1800.0'
        in text
    )
    assert (
        'switchyard_cached_tokens_total{kind="write",model="claude-v2",task="default",tier="frontier"} 150.0'
        in text
    )
    assert 'kind="write",model="gpt-4-1106-preview"' not in text


def test_usage_chunk_reports_cached_tokens_when_given() -> None:
    assert "prompt_tokens_details" not in usage_chunk("c", 1, GPT4, 10, 2)["usage"]
    assert usage_chunk("c", 1, GPT4, 2000, 2, 1536)["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 1536
    }


# -- the router's cost model -----------------------------------------------------------------------


def _catalog(rag_share: float) -> Catalog:
    """Two candidates: ``cacheable`` has dear input but cheap cached input, ``flat`` a flat price."""
    return Catalog.model_validate(
        {
            "providers": [{"name": "p", "base_url": "http://127.0.0.1:1"}],
            "tiers": ["mid", "frontier"],
            "models": [
                {"id": "strong", "provider": "p", "tier": "frontier", "price": {"input": 30, "output": 60}},
                {
                    "id": "cacheable",
                    "provider": "p",
                    "tier": "mid",
                    "price": {"input": 10, "output": 2, "cached_input": 1},
                },
                {"id": "flat", "provider": "p", "tier": "mid", "price": {"input": 5, "output": 5}},
            ],
            "strong_model": "strong",
            "default_model": "flat",
            "tasks": {"rag": {"cached_share": rag_share}},
        }
    )


def test_effective_input_price_follows_the_tasks_cached_share() -> None:
    cat = _catalog(0.8)
    price = cat.model("cacheable").price
    assert price.effective_input(0.8) == pytest.approx(0.2 * 10 + 0.8 * 1)
    assert cat.blended_price("cacheable", "rag") == pytest.approx((2.8 + 2) / 2)
    assert cat.blended_price("cacheable", "chat") == cat.blended_price("cacheable") == 6.0  # default share 0


@pytest.mark.parametrize("policy", ["calibrated", "ratio"])
def test_a_high_cached_share_changes_the_cheapest_candidate(policy: str) -> None:
    cat = _catalog(0.8)
    scores = {"strong": 0.9, "cacheable": 0.85, "flat": 0.85}
    if policy == "calibrated":
        table = ThresholdTable(targets=[0.5, 1.0], thresholds=[0.4, 0.0], candidates=list(scores), n=100)
        pol = RoutingPolicy(cat, Calibration(models=list(scores), strong_model="strong", global_table=table))
    else:
        pol = ScoreRatioPolicy(cat)
    chat = pol.decide(scores, task="chat", quality_target=0.5)
    rag = pol.decide(scores, task="rag", quality_target=0.5)
    assert chat.model == "flat"  # list prices: 6.0 vs 5.0 blended
    assert rag.model == "cacheable"  # 80 % cached: 2.4 vs 5.0
    assert rag.expected_cost_usd == pytest.approx((512 * 2.8 + 256 * 2) / 1e6)
    low = _catalog(0.1)  # a share too low to matter: the flat model stays the cheapest
    low_pol = RoutingPolicy(low, pol.calibration) if policy == "calibrated" else ScoreRatioPolicy(low)
    assert low_pol.decide(scores, task="rag", quality_target=0.5).model == "flat"


def test_cascade_ladder_orders_rungs_at_the_tasks_cached_share() -> None:
    cat = _catalog(0.8)
    ranking = ["strong", "cacheable", "flat"]
    assert cascade_ladder(cat, ranking, "flat", cheapest_first=True, limit=3) == [
        "flat",
        "cacheable",
        "strong",
    ]
    assert cascade_ladder(cat, ranking, "flat", cheapest_first=True, limit=3, task="rag") == [
        "cacheable",
        "flat",
        "strong",
    ]


# -- the emulator's prompt cache rules -------------------------------------------------------------


def test_emulator_openai_rule_reads_a_repeated_long_prefix_in_steps() -> None:
    clock = [0.0]
    cache = PromptCache(clock=lambda: clock[0])
    system = "x" * 4 * 1500  # ~1500 tokens
    assert cache.use("m", [system, "first question"], None).read == 0  # cold
    hit = cache.use("m", [system, "another question"], None)
    assert hit.read >= MIN_TOKENS and (hit.read - MIN_TOKENS) % OPENAI_STEP == 0 and hit.written == 0
    assert cache.use("other-model", [system, "q"], None).read == 0  # caches are per model
    assert cache.use("m", ["short", "q"], None).read == 0 and cache.use("m", ["short", "q"], None).read == 0
    clock[0] += 301  # past the TTL
    assert cache.use("m", [system, "a third question"], None).read == 0


def test_emulator_anthropic_rule_writes_then_reads_marked_prefixes_only() -> None:
    cache = PromptCache(clock=lambda: 0.0)
    system = "x" * 4 * 1500
    assert cache.use("m", [system, "q1"], ()).read == 0 and cache.use("m", [system, "q2"], ()).read == 0
    first = cache.use("m", [system, "q1"], (0,))
    assert first.read == 0 and first.written > MIN_TOKENS
    second = cache.use("m", [system, "q2"], (0,))
    assert second.read == first.written and second.written == 0


def test_cost_cap_bounds_a_cache_marking_request_at_the_write_rate() -> None:
    from services.contracts.api import ChatCompletionRequest
    from services.gateway.costcap import CostCap, marks_cache

    part = {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}
    marked = ChatCompletionRequest.model_validate(
        {
            "model": CLAUDE,
            "messages": [{"role": "system", "content": [part]}, {"role": "user", "content": "q"}],
        }
    )
    assert marks_cache(marked) and not marks_cache(
        ChatCompletionRequest.model_validate({"model": CLAUDE, **MSGS})
    )
    plain, writing = CostCap(CATALOG, 0.02, 1000), CostCap(CATALOG, 0.02, 1000, writes_cache=True)
    # claude-v2: 1000 prompt tokens at $8/M = $0.008, as a cache write at $10/M = $0.010
    assert plain.allowance(CLAUDE) == (0.02 - 0.008) * 1e6 // 24
    assert writing.allowance(CLAUDE) == (0.02 - 0.010) * 1e6 // 24
    assert writing.allowance(GPT4) == plain.allowance(GPT4)  # OpenAI bills no cache writes

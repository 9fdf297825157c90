"""Provider adapters and the pool over real httpx clients with an in-process transport:
retries honouring Retry-After, fallbacks, breakers, timeouts, stream cut handling."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest

from services.catalog import load_catalog
from services.errors import AllUpstreamsFailed, UpstreamError, UpstreamRejectedRequest
from services.gateway.testing import chunk, completion, sse
from services.providers.anthropic import AnthropicAdapter, to_messages_request
from services.providers.breaker import BreakerPolicy, BreakerState
from services.providers.http import parse_retry_after
from services.providers.openai import OpenAIAdapter
from services.providers.pool import MidStreamError, ProviderPool, RetryPolicy

CATALOG = load_catalog()
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
CLAUDE = "claude-v2"
MSGS = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+2?"}]}


class Upstream:
    """A scripted upstream: per model, a list of handlers used in turn (last one repeats)."""

    def __init__(self, script: dict[str, list[Callable[[dict], httpx.Response]]]):
        self.script = script
        self.calls: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model = body["model"]
        self.calls.append(model)
        handlers = self.script[model]
        n = sum(1 for c in self.calls if c == model)
        return handlers[min(n, len(handlers)) - 1](body)


def ok(body: dict) -> httpx.Response:
    if body.get("stream"):
        return httpx.Response(
            200,
            content=sse([chunk(body["model"], "2+2="), chunk(body["model"], "4", "stop")]),
            headers={"content-type": "text/event-stream"},
        )
    return httpx.Response(200, json=completion(body["model"]))


def status(code: int, headers: dict | None = None) -> Callable[[dict], httpx.Response]:
    return lambda body: httpx.Response(
        code, json={"error": {"message": f"boom {code}"}}, headers=headers or {}
    )


def pool_for(upstream: Upstream, **kw) -> ProviderPool:
    transport = httpx.MockTransport(upstream)
    adapters = {
        p.name: (
            AnthropicAdapter(p, transport=transport)
            if p.kind == "anthropic"
            else OpenAIAdapter(p, transport=transport)
        )
        for p in CATALOG.providers
    }
    kw.setdefault("retry", RetryPolicy(initial_s=0.001, max_s=0.01, jitter_s=0.001, max_retry_after_s=1))
    return ProviderPool(CATALOG, adapters=adapters, **kw)


def test_fallback_order_follows_ranking_then_catalog_chain() -> None:
    pool = ProviderPool(CATALOG, adapters={}, max_models=5)
    assert pool.fallback_order(WEAK) == [WEAK, STRONG, CLAUDE]  # the chain leaves the provider at the end
    order = pool.fallback_order("mistralai/mistral-7b-chat", ranking=[WEAK, "gpt-3.5-turbo-1106"])
    assert order[:3] == ["mistralai/mistral-7b-chat", WEAK, "gpt-3.5-turbo-1106"]
    assert "mistralai/mixtral-8x7b-chat" in order  # the catalog chain comes after the ranking
    assert len(order) == len(set(order)) <= 5


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


async def test_retries_429_honouring_retry_after_then_succeeds() -> None:
    up = Upstream({WEAK: [status(429, {"retry-after": "0.3"}), ok]})
    pool = pool_for(up)
    attempts: list = []
    t0 = time.perf_counter()
    model, result = await pool.complete([WEAK, STRONG], MSGS, attempts)
    waited = time.perf_counter() - t0
    assert model == WEAK and result.content == "4"
    assert waited >= 0.3, "Retry-After was not honoured"
    assert [a.status for a in attempts] == ["error", "ok"]
    assert attempts[0].http_status == 429
    assert attempts[1].cost_usd == pytest.approx(CATALOG.model(WEAK).price.cost(10, 2))
    await pool.aclose()


async def test_long_retry_after_falls_back_instead_of_waiting() -> None:
    up = Upstream({WEAK: [status(429, {"retry-after": "30"})], STRONG: [ok]})
    pool = pool_for(up)
    attempts: list = []
    t0 = time.perf_counter()
    model, _ = await pool.complete([WEAK, STRONG], MSGS, attempts)
    assert model == STRONG and time.perf_counter() - t0 < 1
    assert up.calls == [WEAK, STRONG]


async def test_5xx_exhausts_retries_then_falls_back() -> None:
    up = Upstream({WEAK: [status(500)], STRONG: [ok]})
    pool = pool_for(up)
    attempts: list = []
    model, _ = await pool.complete([WEAK, STRONG], MSGS, attempts)
    retries = CATALOG.provider("emulator-openai").max_retries
    assert model == STRONG
    assert up.calls == [WEAK] * (retries + 1) + [STRONG]
    assert [a.model for a in attempts] == [WEAK] * (retries + 1) + [STRONG]


@pytest.mark.parametrize("code", [400, 413, 422])
async def test_an_upstream_refusing_the_request_is_a_400_without_retry_or_fallback(code: int) -> None:
    # the request is at fault (a parameter, a prompt over the window): another model would answer
    # a different request silently, so the caller gets a 400 naming the upstream
    up = Upstream({WEAK: [status(code)], STRONG: [ok]})
    pool = pool_for(up)
    with pytest.raises(UpstreamRejectedRequest) as info:
        await pool.complete([WEAK, STRONG], MSGS, [])
    assert up.calls == [WEAK] and info.value.status == 400 and "emulator-openai" in info.value.message


async def test_other_4xx_are_not_retried_but_fall_back() -> None:
    up = Upstream({WEAK: [status(404)], STRONG: [ok]})  # e.g. the upstream does not know the model
    pool = pool_for(up)
    model, _ = await pool.complete([WEAK, STRONG], MSGS, [])
    assert up.calls == [WEAK, STRONG] and model == STRONG


async def test_all_failing_raises_502_naming_the_upstream() -> None:
    up = Upstream({WEAK: [status(503)], STRONG: [status(503)]})
    pool = pool_for(up)
    with pytest.raises(AllUpstreamsFailed) as info:
        await pool.complete([WEAK, STRONG], MSGS, [])
    assert info.value.status == 502 and "emulator-openai" in info.value.message


async def test_timeout_is_504() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    pool = pool_for(Upstream({}))
    for a in pool.adapters.values():
        a._client._transport = httpx.MockTransport(slow)  # type: ignore[attr-defined]
    with pytest.raises(AllUpstreamsFailed) as info:
        await pool.complete([WEAK], MSGS, [])
    assert info.value.status == 504


async def test_total_timeout_bounds_a_slow_answer() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=completion("x"))

    provider = CATALOG.provider("emulator-openai").model_copy(update={"timeout_total_s": 0.2})
    adapter = OpenAIAdapter(provider, transport=httpx.MockTransport(slow))
    t0 = time.perf_counter()
    with pytest.raises(UpstreamError) as info:
        await adapter.complete(MSGS, WEAK)
    assert info.value.status == 504 and time.perf_counter() - t0 < 1


async def test_breaker_opens_skips_upstream_and_closes_after_probe() -> None:
    now = [0.0]
    up = Upstream({WEAK: [status(500)] * 6 + [ok], STRONG: [ok]})
    states: list = []
    pool = pool_for(
        up,
        breaker=BreakerPolicy(failure_rate=1.0, min_calls=3, reset_timeout_s=10, half_open_probes=1),
        clock=lambda: now[0],
        on_breaker_change=lambda n, s: states.append((n, s)),
    )
    await pool.complete([WEAK, STRONG], MSGS, [])  # 3 failures -> open
    assert pool.breaker(WEAK).state is BreakerState.OPEN
    calls_before = len(up.calls)
    attempts: list = []
    model, _ = await pool.complete([WEAK, STRONG], MSGS, attempts)
    assert model == STRONG and up.calls[calls_before:] == [STRONG]  # WEAK not attempted
    assert attempts[0].status == "skipped"
    now[0] = 11  # half-open: one probe goes through; the script now makes WEAK fail 3 more then succeed
    up.script[WEAK] = [ok]
    model, _ = await pool.complete([WEAK, STRONG], MSGS, [])
    assert model == WEAK and pool.breaker(WEAK).state is BreakerState.CLOSED
    assert [s for _, s in states] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


async def test_stream_failure_before_first_token_falls_back_silently() -> None:
    def cut_early(body: dict) -> httpx.Response:  # role chunk only, then cut without [DONE]
        role = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": WEAK,
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
        }
        return httpx.Response(
            200, content=sse([role], done=False), headers={"content-type": "text/event-stream"}
        )

    up = Upstream({WEAK: [cut_early], STRONG: [ok]})
    pool = pool_for(up, retry=RetryPolicy(initial_s=0.001, max_s=0.001, jitter_s=0))
    attempts: list = []
    handle = await pool.stream([WEAK, STRONG], MSGS, attempts)
    text = "".join([(c["choices"][0]["delta"].get("content") or "") async for c in handle.chunks])
    assert handle.model == STRONG and text == "2+2=4"
    assert attempts[-1].status == "ok" and attempts[-1].model == STRONG
    assert all(a.status == "error" for a in attempts[:-1])


async def test_stream_cut_after_first_token_raises_mid_stream_error() -> None:
    def cut_late(body: dict) -> httpx.Response:
        return httpx.Response(
            200, content=sse([chunk(WEAK, "2+2")], done=False), headers={"content-type": "text/event-stream"}
        )

    up = Upstream({WEAK: [cut_late], STRONG: [ok]})
    pool = pool_for(up)
    attempts: list = []
    handle = await pool.stream([WEAK, STRONG], MSGS, attempts)
    got = []
    with pytest.raises(MidStreamError):
        async for c in handle.chunks:
            got.append(c)
    assert len(got) == 1 and up.calls == [WEAK]  # no silent switch after a token was sent
    assert attempts[-1].status == "error" and "mid-stream" in (attempts[-1].error or "")


def anthropic_ok(body: dict) -> httpx.Response:
    assert body["system"] == "be brief" and body["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    if body.get("stream"):
        events = [
            {"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 7}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Four"}},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
            {"type": "message_stop"},
        ]
        text = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
        return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})
    return httpx.Response(
        200,
        json={
            "id": "m1",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "Four"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 7, "output_tokens": 3},
        },
    )


async def test_anthropic_adapter_translates_both_ways() -> None:
    pool = pool_for(Upstream({CLAUDE: [anthropic_ok]}))
    attempts: list = []
    model, result = await pool.complete([CLAUDE], MSGS, attempts)
    assert result.body["object"] == "chat.completion" and result.content == "Four"
    assert (result.prompt_tokens, result.completion_tokens) == (7, 3)
    handle = await pool.stream([CLAUDE], MSGS, attempts)
    chunks = [c async for c in handle.chunks]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Four"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert (handle.usage.prompt_tokens, handle.usage.completion_tokens) == (7, 3)


def test_anthropic_request_maps_params() -> None:
    body = to_messages_request({**MSGS, "max_tokens": 50, "stop": "x", "temperature": 0.2}, "claude-v2")
    assert body["max_tokens"] == 50 and body["stop_sequences"] == ["x"] and body["temperature"] == 0.2
    assert to_messages_request(MSGS, "c")["max_tokens"] > 0


async def test_client_errors_and_rate_limits_never_open_the_breaker() -> None:
    up = Upstream({WEAK: [status(400), status(422), status(429, {"retry-after": "0"})], STRONG: [ok]})
    pool = pool_for(up, breaker=BreakerPolicy(failure_rate=0.5, min_calls=2))
    for _ in range(2):
        with pytest.raises(UpstreamRejectedRequest):  # 400 and 422: the caller's 400
            await pool.complete([WEAK, STRONG], MSGS, [])
    for _ in range(5):  # 429s: retried, then the fallback answers
        await pool.complete([WEAK, STRONG], MSGS, [])
    assert pool.breaker(WEAK).state is BreakerState.CLOSED and pool.breaker(WEAK).window() == (0, 0)
    up.script[WEAK] = [status(503)]
    await pool.complete([WEAK, STRONG], MSGS, [])  # 5xx do count: three tries, all failed
    assert pool.breaker(WEAK).state is BreakerState.OPEN


async def test_a_probe_cancelled_by_its_client_does_not_leave_the_breaker_half_open() -> None:
    now = [0.0]
    hang = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["model"] == WEAK and not hang.is_set():
            await asyncio.sleep(30)  # the probe hangs until its client gives up
        return httpx.Response(200, json=completion(body["model"]))

    pool = pool_for(
        Upstream({}),
        breaker=BreakerPolicy(min_calls=1, failure_rate=1.0, reset_timeout_s=5, half_open_probes=1),
        clock=lambda: now[0],
    )
    pool.adapters = {
        p.name: OpenAIAdapter(p, transport=httpx.MockTransport(handler))
        for p in CATALOG.providers
        if p.kind == "openai"
    }
    b = pool.breaker(WEAK)
    b.record_failure(b.acquire())
    now[0] = 5.0  # half-open: one probe slot
    probe = asyncio.create_task(pool.complete([WEAK], MSGS, []))
    await asyncio.sleep(0.05)
    assert b.acquire() is None  # the slot is taken by the hanging probe
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    hang.set()  # the upstream is healthy again: the next request must be let through and close it
    model, _ = await pool.complete([WEAK, STRONG], MSGS, [])
    assert model == WEAK and b.state is BreakerState.CLOSED


def test_each_protocol_presents_its_key_its_own_way(monkeypatch) -> None:
    monkeypatch.setenv("SWITCHYARD_UPSTREAM_OPENAI_KEY", "sk-o")
    monkeypatch.setenv("SWITCHYARD_UPSTREAM_ANTHROPIC_KEY", "sk-a")
    openai_h = OpenAIAdapter(CATALOG.provider("emulator-openai"))._client.headers
    anthropic_h = AnthropicAdapter(CATALOG.provider("emulator-anthropic"))._client.headers
    assert openai_h["authorization"] == "Bearer sk-o" and "x-api-key" not in openai_h
    assert anthropic_h["x-api-key"] == "sk-a" and "authorization" not in anthropic_h
    assert anthropic_h["anthropic-version"] and openai_h["content-type"] == "application/json"

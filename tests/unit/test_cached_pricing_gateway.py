"""Cached-token pricing through the gateway in-process: the call event's usage, the usage chunk
of a stream and /metrics carry what the upstream read from its prompt cache, and the cost header
prices it at the catalog's cached rate. (Needs the service.py lines of
/tmp/h/cached_pricing_service.patch.)"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from services.catalog import load_catalog
from services.gateway.app import create_app
from services.gateway.bootstrap import build_gateway
from services.gateway.emitter import EmitterConfig, EventEmitter
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import Broker, FakeProducer, FakeRouter, Upstream, chunk, mock_adapters, sse
from services.providers.pool import ProviderPool

CATALOG = load_catalog()
STRONG = "gpt-4-1106-preview"
KEY = "sk-test-cached"
USAGE = {
    "prompt_tokens": 2000,
    "completion_tokens": 10,
    "total_tokens": 2010,
    "prompt_tokens_details": {"cached_tokens": 1536},
}


class CachingUpstream(Upstream):
    """The shared fake upstream, reporting 1,536 of 2,000 prompt tokens as cached."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        resp = await super().__call__(request)
        if json.loads(request.content).get("stream"):
            model = json.loads(request.content)["model"]
            events = [
                chunk(model, "Hel"),
                chunk(model, "lo", "stop"),
                {**chunk(model, None), "choices": [], "usage": USAGE},
            ]
            return httpx.Response(200, content=sse(events), headers={"content-type": "text/event-stream"})
        data = json.loads(resp.content)
        return httpx.Response(200, json={**data, "usage": USAGE})


@pytest.fixture
def stack(tmp_path: Path):
    broker = Broker()
    router = FakeRouter(choose=STRONG)
    pool = ProviderPool(CATALOG, adapters=mock_adapters(CATALOG, httpx.MockTransport(CachingUpstream())))
    emitter = EventEmitter(
        EmitterConfig(bootstrap="x:1", spool_dir=tmp_path / "spool"), lambda: FakeProducer(broker)
    )
    settings = GatewaySettings(api_key_hashes=[hash_key(KEY)], state_dir=tmp_path)
    gw = build_gateway(settings, router.route, router.status, catalog=CATALOG, pool=pool, emitter=emitter)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gw)),
        base_url="http://gw",
        headers={"authorization": f"Bearer {KEY}"},
    )
    return client, broker, gw


async def test_cached_tokens_reach_the_event_the_stream_and_metrics(stack) -> None:
    client, broker, gw = stack
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    r = await client.post("/v1/chat/completions", json={"model": STRONG, "messages": msgs})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 1536
    price = CATALOG.model(STRONG).price
    assert float(r.headers["x-switchyard-cost-usd"]) == pytest.approx(price.cost(2000, 10, 1536), abs=1e-8)
    s = await client.post(
        "/v1/chat/completions",
        json={
            "model": STRONG,
            "messages": [{"role": "user", "content": "And 3+3?"}],  # not a repeat: no semantic-cache hit
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    usage = [json.loads(line[6:]) for line in s.text.splitlines() if line.startswith("data: {")][-1]["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1536}
    assert await gw.service.emitter.flush(5)
    calls = [json.loads(v) for t, _, v in broker.log if t == "switchyard.calls.v1"]
    assert [c["usage"]["cached_tokens"] for c in calls] == [1536, 1536]
    assert all(c["attempts"][-1]["cached_tokens"] == 1536 for c in calls)
    text = (await client.get("/metrics")).text
    series = f'switchyard_cached_tokens_total{{kind="read",model="{STRONG}",task="default",tier="frontier"}}'
    assert f"{series} 3072.0" in text

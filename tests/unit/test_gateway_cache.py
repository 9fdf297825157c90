"""The semantic cache on the gateway's request path, in-process (no Ray, no network): what is
served from it, what is stored and when, opt-out, streams, events, tenants, and the false-hit
watch's actions (streams' alert → the gateway's policy)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.catalog import load_catalog
from services.contracts.events import OutcomeEvent, RoutingMode
from services.gateway.app import create_app
from services.gateway.cachepolicy import CachePolicy
from services.gateway.routing import RouteRequest, RouteResult
from services.gateway.semcache import CacheConfig, SemanticCache
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import FakeRouter, fake_gateway
from streams.cachewatch import CacheWatch, CacheWatchConfig
from streams.settings import StreamsSettings

CATALOG = load_catalog()
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
KEY, OTHER_TENANT_KEY = "sk-cache-1", "sk-cache-2"


class EmbeddingRouter(FakeRouter):
    """The fake router, plus what the real one returns when asked: the query's embedding. Texts
    map to fixed unit vectors; a text not listed gets a random one (unrelated)."""

    def __init__(self, choose: str, vectors: dict[str, np.ndarray]) -> None:
        super().__init__(choose)
        self.vectors = vectors
        self.rng = np.random.default_rng(0)

    async def route(self, req: RouteRequest) -> RouteResult:
        res = await super().route(req)
        if not req.embed:
            return res
        v = self.vectors.get(req.prompt)
        if v is None:
            v = self.rng.normal(size=8)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        return RouteResult(
            res.scores, res.router_version, res.model, res.ranking, res.threshold, res.margin,
            res.low_margin, embedding=v.tobytes(), embedding_space="space-a",
        )  # fmt: skip


BASE = np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=np.float64)
NEAR = BASE + np.array([0, 0.05, 0, 0, 0, 0, 0, 0])  # cosine ~0.999
Q = "What is the capital of France?"
Q_NEAR = "what's the capital city of France?"
Q_NUM = "What is 12 + 30?"
Q_NUM_CHANGED = "What is 12 + 31?"


@pytest.fixture
def stack(tmp_path: Path):
    def make(choose: str = STRONG):
        router = EmbeddingRouter(choose, {Q: BASE, Q_NEAR: NEAR, Q_NUM: BASE * -1, Q_NUM_CHANGED: BASE * -1})
        settings = GatewaySettings(
            api_key_hashes=[hash_key(KEY), hash_key(OTHER_TENANT_KEY)],
            state_dir=tmp_path,
            cache_enabled=True,
            cache_threshold=0.95,
            events_enabled=False,  # the emitter is given; no alert follower (its logic: CachePolicy)
        )
        gw, upstream, broker = fake_gateway(settings, router, CATALOG, tmp_path / "spool")

        def client(key: str = KEY) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(gw)),
                base_url="http://gw",
                headers={"authorization": f"Bearer {key}"},
            )

        return client, upstream, router, broker, gw

    return make


def ask(text: str, **kw) -> dict:
    return {"model": "switchyard/auto", "messages": [{"role": "user", "content": text}], **kw}


async def calls(gw, broker) -> list[dict]:
    assert await gw.service.emitter.flush(5)
    return [json.loads(v) for t, _, v in broker.log if t.endswith("calls.v1")]


async def test_a_strong_answer_is_served_again_for_a_repeat_and_a_paraphrase(stack) -> None:
    client, upstream, _, broker, gw = stack(STRONG)
    c = client()
    first = await c.post("/v1/chat/completions", json=ask(Q))
    assert first.status_code == 200 and "x-switchyard-cache" not in first.headers
    n_upstream = len(upstream.calls)
    again = await c.post("/v1/chat/completions", json=ask("  what is the capital of france? "))
    near = await c.post("/v1/chat/completions", json=ask(Q_NEAR))
    assert len(upstream.calls) == n_upstream  # neither called a model
    for r, exact in ((again, True), (near, False)):
        assert r.status_code == 200 and r.headers["x-switchyard-cache"] == "hit"
        assert r.headers["x-switchyard-cache-source"] == first.headers["x-switchyard-request-id"]
        assert float(r.headers["x-switchyard-cost-usd"]) == 0.0
        data = r.json()
        assert data["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
        assert data["id"] == r.headers["x-switchyard-request-id"] != first.json()["id"]
        assert (float(r.headers["x-switchyard-cache-similarity"]) == 1.0) is exact
    events = {e["request_id"]: e for e in await calls(gw, broker)}
    hit = events[near.headers["x-switchyard-request-id"]]
    assert hit["cache_hit"] and hit["attempts"] == [] and hit["cost_usd"] == 0
    assert hit["cache_source_request_id"] == first.headers["x-switchyard-request-id"]
    assert 0.95 <= hit["cache_similarity"] < 1 and hit["cache_saved_usd"] > 0
    assert not events[first.headers["x-switchyard-request-id"]]["cache_hit"]
    metrics = gw.metrics.registry.get_sample_value
    assert metrics("switchyard_cache_lookups_total", {"task": "default", "result": "hit_exact"}) == 1
    assert metrics("switchyard_cache_lookups_total", {"task": "default", "result": "hit_semantic"}) == 1


async def test_a_cheap_answer_waits_for_good_feedback_and_bad_feedback_keeps_it_out(stack) -> None:
    client, upstream, _, _, _ = stack(WEAK)
    c = client()
    first = await c.post("/v1/chat/completions", json=ask(Q))
    second = await c.post("/v1/chat/completions", json=ask(Q))
    assert "x-switchyard-cache" not in second.headers  # not judged good yet: not served
    rid = first.headers["x-switchyard-request-id"]
    fb = await c.post("/v1/feedback", json={"request_id": rid, "label": "good"})
    assert fb.status_code == 202, fb.text
    third = await c.post("/v1/chat/completions", json=ask(Q))
    assert third.headers["x-switchyard-cache"] == "hit"
    assert third.headers["x-switchyard-cache-source"] == rid
    # the answer served was wrong for this caller: negative feedback on the hit drops its source
    bad = await c.post(
        "/v1/feedback", json={"request_id": third.headers["x-switchyard-request-id"], "label": "bad"}
    )
    assert bad.status_code == 202
    n = len(upstream.calls)
    fourth = await c.post("/v1/chat/completions", json=ask(Q))
    assert "x-switchyard-cache" not in fourth.headers and len(upstream.calls) == n + 1
    # a second call's answer judged bad is never admitted, even if a good grade comes later
    rid2 = second.headers["x-switchyard-request-id"]
    await c.post("/v1/feedback", json={"request_id": rid2, "label": "bad"})
    await c.post("/v1/feedback", json={"request_id": rid2, "label": "good"})
    fifth = await c.post("/v1/chat/completions", json=ask(Q))
    assert fifth.headers.get("x-switchyard-cache-source") != rid2


async def test_changed_numbers_other_tenants_and_opt_outs_are_not_served(stack) -> None:
    client, upstream, _, _, _ = stack(STRONG)
    c = client()
    await c.post("/v1/chat/completions", json=ask(Q_NUM))
    await c.post("/v1/chat/completions", json=ask(Q))
    n = len(upstream.calls)
    # the same embedding (the fake router gives both the same vector), other numbers: the guard
    changed = await c.post("/v1/chat/completions", json=ask(Q_NUM_CHANGED))
    assert "x-switchyard-cache" not in changed.headers
    # another tenant never sees this tenant's answers
    other = await client(OTHER_TENANT_KEY).post("/v1/chat/completions", json=ask(Q))
    assert "x-switchyard-cache" not in other.headers
    # opted out by header and by knob; other parameters are another namespace
    hdr = await c.post("/v1/chat/completions", json=ask(Q), headers={"x-switchyard-cache": "off"})
    knob = await c.post("/v1/chat/completions", json=ask(Q, switchyard={"cache": False}))
    temp = await c.post("/v1/chat/completions", json=ask(Q, temperature=1.5))
    for r in (hdr, knob, temp):
        assert r.status_code == 200 and "x-switchyard-cache" not in r.headers
    assert len(upstream.calls) == n + 5


async def test_streamed_answers_are_stored_and_served_as_streams(stack) -> None:
    client, upstream, _, _, _ = stack(STRONG)
    c = client()
    first = await c.post("/v1/chat/completions", json=ask(Q, stream=True))
    assert first.status_code == 200 and "data: [DONE]" in first.text
    n = len(upstream.calls)
    again = await c.post("/v1/chat/completions", json=ask(Q, stream=True))
    assert again.headers["x-switchyard-cache"] == "hit" and len(upstream.calls) == n
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in again.text.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    assert text == "Hello" and again.text.rstrip().endswith("data: [DONE]")
    # and a non-streamed request gets the streamed answer as a completion
    plain = await c.post("/v1/chat/completions", json=ask(Q))
    assert plain.headers["x-switchyard-cache"] == "hit"
    assert plain.json()["choices"][0]["message"]["content"] == "Hello"


def outcome(sim: float, accepted: bool, i: int) -> OutcomeEvent:
    return OutcomeEvent(
        request_id=f"r{i}",
        ts=datetime(2026, 12, 2, tzinfo=UTC) + timedelta(seconds=i),
        task="gsm8k",
        prompt_hash="h" * 16,
        chosen_model=STRONG,
        mode=RoutingMode.ROUTE,
        score=1.0 if accepted else 0.0,
        accepted=accepted,
        cache_hit=True,
        cache_similarity=sim,
    )


def test_false_hits_raise_the_threshold_then_switch_the_task_off() -> None:
    watch = CacheWatch(CacheWatchConfig(min_hits=20))
    good = [outcome(0.99, True, i) for i in range(40)]
    assert watch.update(good) is None  # no false hit: nothing to do
    bad = [outcome(0.97, False, 100 + i) for i in range(3)]
    action = watch.update(bad)
    assert action is not None and action.action == "threshold" and action.threshold == pytest.approx(0.975)
    # the gateway applies it: near-duplicates at 0.97 are no longer served
    cache = SemanticCache(CacheConfig(threshold=0.95))
    policy = CachePolicy(cache)
    alert = {"alert_id": "a1", "task": "gsm8k", "detector": "cache_false_hits", "status": "firing"}
    assert policy.observe({**alert, "evidence": action.evidence})
    assert cache.policy("gsm8k").threshold == pytest.approx(0.975) and cache.policy("gsm8k").enabled
    # exact repeats served wrong answers: no threshold helps, the task's cache goes off
    more = [outcome(0.99, True, 200 + i) for i in range(20)] + [
        outcome(1.0, False, 300 + i) for i in range(3)
    ]
    off = watch.update(more)
    assert off is not None and off.action == "off"
    assert policy.observe({**alert, "alert_id": "a2", "evidence": off.evidence})
    assert not cache.policy("gsm8k").enabled
    # resolving the "off" alert restores the raised threshold, never below the configured one
    assert policy.observe({**alert, "alert_id": "a2", "status": "resolved"})
    assert cache.policy("gsm8k").enabled and cache.policy("gsm8k").threshold == pytest.approx(0.975)
    assert cache.policy("other").threshold == pytest.approx(0.95)


def test_the_watch_is_wired_into_the_streams_monitor() -> None:
    from streams.drift import TaskMonitor

    monitor = TaskMonitor(StreamsSettings(), {}, {}, write_reports=False)
    outs = [outcome(0.99, True, i) for i in range(30)] + [outcome(0.96, False, 50 + i) for i in range(4)]
    res = monitor.on_outcomes("gsm8k", outs)
    fired = [a for a in res.alerts if a.detector == "cache_false_hits"]
    assert len(fired) == 1 and fired[0].evidence["action"] == "threshold"
    assert fired[0].evidence["threshold"] == pytest.approx(0.965)

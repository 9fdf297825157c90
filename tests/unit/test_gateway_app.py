"""The gateway's HTTP surface in-process (no Ray, no network): OpenAI shapes and errors, auth,
limits, knobs, router fallback, cascade accounting, streaming, events and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import httpx
import pytest

from services.catalog import load_catalog
from services.contracts.events import CallEvent, FeedbackEvent
from services.gateway.app import create_app
from services.gateway.bootstrap import build_gateway
from services.gateway.emitter import EmitterConfig, EventEmitter
from services.gateway.routing import RouteRequest, RouteResult
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import (
    Broker,
    FakeProducer,
    FakeRouter,
    Upstream,
    mock_adapters,
)
from services.providers.pool import ProviderPool, RetryPolicy

CATALOG = load_catalog()
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
KEY = "sk-test-123"
OTHER_KEY, JUDGE_KEY = "sk-test-other", "sk-test-judge"


@pytest.fixture
def stack(tmp_path: Path):
    upstream, router, broker = Upstream(), FakeRouter(), Broker()
    adapters = mock_adapters(CATALOG, httpx.MockTransport(upstream))
    pool = ProviderPool(
        CATALOG, retry=RetryPolicy(initial_s=0.001, max_s=0.001, jitter_s=0), adapters=adapters
    )
    emitter = EventEmitter(
        EmitterConfig(bootstrap="x:1", spool_dir=tmp_path / "spool"), lambda: FakeProducer(broker)
    )
    settings = GatewaySettings(
        api_key_hashes=[hash_key(KEY), hash_key(OTHER_KEY)],
        judge_key_hashes=[hash_key(JUDGE_KEY)],
        rate_limit_rps=50,
        rate_limit_burst=50,
        max_body_bytes=20_000,
        state_dir=tmp_path,
    )
    gw = build_gateway(settings, router.route, router.status, catalog=CATALOG, pool=pool, emitter=emitter)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gw)),
        base_url="http://gw",
        headers={"authorization": f"Bearer {KEY}"},
    )
    return client, upstream, router, broker, gw


def body(**kw) -> dict:
    return {"model": "switchyard/auto", "messages": [{"role": "user", "content": "What is 2+2?"}], **kw}


async def events(gw, broker) -> list:
    assert await gw.service.emitter.flush(5)
    return [json.loads(v) for _, _, v in broker.log]


async def test_routed_call_answers_in_openai_shape_and_emits_one_event(stack) -> None:
    client, upstream, router, broker, gw = stack
    r = await client.post(
        "/v1/chat/completions", json=body(switchyard={"task": "astronomy", "quality_target": 0.9})
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == WEAK and data["choices"][0]["message"]["content"] == f"answer from {WEAK}"
    rid = r.headers["x-switchyard-request-id"]
    assert r.headers["x-switchyard-route"] == "route"
    cost = float(r.headers["x-switchyard-cost-usd"])
    assert cost == pytest.approx(CATALOG.model(WEAK).price.cost(10, 2))
    assert router.seen[0].task == "astronomy" and router.seen[0].quality_target == 0.9
    [ev] = await events(gw, broker)
    call = CallEvent.model_validate(ev)
    assert call.request_id == rid and call.chosen_model == WEAK and call.task == "astronomy"
    assert (
        call.router_version == "v-test" and call.scores[WEAK] == 0.9 and call.cost_usd == pytest.approx(cost)
    )
    assert call.prompt == "What is 2+2?" and call.status == "ok"


async def test_header_knobs_and_passthrough(stack) -> None:
    client, upstream, router, broker, gw = stack
    r = await client.post("/v1/chat/completions", json=body(), headers={"x-switchyard-task": "mmlu"})
    assert r.status_code == 200 and router.seen[-1].task == "mmlu"
    r = await client.post("/v1/chat/completions", json=body(model=STRONG))
    assert r.status_code == 200 and r.json()["model"] == STRONG
    assert r.headers["x-switchyard-route"] == "passthrough" and len(router.seen) == 1


async def test_fallback_follows_ranking_when_the_chosen_model_fails(stack) -> None:
    client, upstream, router, broker, gw = stack
    upstream.fail.add(WEAK)
    r = await client.post("/v1/chat/completions", json=body())
    assert r.status_code == 200 and r.json()["model"] == STRONG
    [ev] = await events(gw, broker)
    assert [a["model"] for a in ev["attempts"]][-1] == STRONG and ev["attempts"][0]["status"] == "error"


async def test_router_failure_uses_catalog_default_and_flags_the_event(stack) -> None:
    client, upstream, router, broker, gw = stack
    router.broken = True
    r = await client.post("/v1/chat/completions", json=body())
    assert r.status_code == 200 and r.json()["model"] == CATALOG.default_model
    assert r.headers["x-switchyard-route"] == "route" and r.headers["x-switchyard-route-source"] == "default"
    [ev] = await events(gw, broker)
    assert ev["router_fallback"] is True and ev["route_source"] == "default"
    metrics = (await client.get("/metrics")).text
    assert 'switchyard_router_fallbacks_total{source="default"} 1.0' in metrics
    assert 'source="default",task="default",tier="budget"' in metrics  # routes_total tells it apart


async def test_router_failure_after_learned_decisions_draws_from_the_task_prior(stack) -> None:
    # the router chose the weak model for this task; when it fails the task keeps that mix: the
    # request does not go to the catalog default, let alone to the strongest model
    client, upstream, router, broker, gw = stack
    gw.service.chain.priors.min_decisions = 3
    for _ in range(3):
        r = await client.post("/v1/chat/completions", json=body(), headers={"x-switchyard-task": "t"})
        assert r.headers["x-switchyard-route-source"] == "router" and r.json()["model"] == WEAK
    router.broken = True
    r = await client.post("/v1/chat/completions", json=body(), headers={"x-switchyard-task": "t"})
    assert r.status_code == 200 and r.json()["model"] == WEAK
    assert r.headers["x-switchyard-route-source"] == "prior"
    evs = await events(gw, broker)
    assert [e["route_source"] for e in evs] == ["router", "router", "router", "prior"]
    assert evs[-1]["router_fallback"] is True and evs[0]["router_fallback"] is False
    metrics = (await client.get("/metrics")).text
    assert 'switchyard_router_fallbacks_total{source="prior"} 1.0' in metrics


async def test_all_upstreams_down_is_502_naming_the_upstream(stack) -> None:
    client, upstream, router, broker, gw = stack
    upstream.fail.update({WEAK, STRONG, "claude-v2"})
    r = await client.post("/v1/chat/completions", json=body())
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and "emulator-anthropic" in err["message"]  # the last one tried
    [ev] = await events(gw, broker)
    assert ev["status"] == "error"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"headers": {"authorization": "Bearer wrong"}}, 401, "invalid_api_key"),
        ({"headers": {"authorization": ""}}, 401, "invalid_api_key"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "bad_request"),
        ({"json": {"model": "switchyard/auto", "messages": []}}, 400, "validation_error"),
        (
            {
                "json": {
                    "model": "switchyard/auto",
                    "messages": [{"role": "user", "content": "x"}],
                    "switchyard": {"quality_target": 2},
                }
            },
            400,
            "validation_error",
        ),
        ({"json": body(model="no-such-model")}, 400, "model_not_found"),
        ({"json": body(), "headers": {"x-switchyard-mode": "yolo"}}, 400, "bad_request"),
        ({"json": body(pad="x" * 30_000)}, 413, "request_too_large"),
    ],
)
async def test_bad_requests_get_openai_error_bodies(stack, kwargs, status, code) -> None:
    client, *_ = stack
    r = await client.post("/v1/chat/completions", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]


async def test_rate_limit_is_429_with_retry_after(stack) -> None:
    from services.gateway.ratelimit import RateLimiter

    client, upstream, router, broker, gw = stack
    gw.limiter = RateLimiter(1.0, 2, gw.limiter.store)
    codes = [(await client.get("/v1/models")).status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and codes[-1] == 429
    r = await client.get("/v1/models")
    assert r.json()["error"]["type"] == "rate_limit_error" and int(r.headers["retry-after"]) >= 1


async def test_cascade_escalates_on_a_rejected_answer_and_counts_every_attempt(stack) -> None:
    client, upstream, router, broker, gw = stack
    upstream.judge_grade = "0"
    r = await client.post("/v1/chat/completions", json=body(switchyard={"mode": "cascade"}))
    assert r.status_code == 200 and r.json()["model"] == STRONG
    [ev] = await events(gw, broker)
    assert ev["escalated"] is True
    assert [(a["model"], a["status"]) for a in ev["attempts"]] == [(WEAK, "rejected"), (STRONG, "ok")]
    assert ev["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in ev["attempts"]))
    assert float(r.headers["x-switchyard-cost-usd"]) == pytest.approx(ev["cost_usd"])


async def test_cascade_accepts_a_good_cheap_answer(stack) -> None:
    client, upstream, router, broker, gw = stack
    r = await client.post("/v1/chat/completions", json=body(switchyard={"mode": "cascade"}))
    assert r.json()["model"] == WEAK
    [ev] = await events(gw, broker)
    assert ev["escalated"] is False and ev["attempts"][0]["accepted_score"] == 1.0


async def test_stream_sends_sse_and_done(stack) -> None:
    client, upstream, router, broker, gw = stack
    async with client.stream(
        "POST", "/v1/chat/completions", json=body(stream=True, stream_options={"include_usage": True})
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello"
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and all(c["model"] == WEAK for c in chunks)
    [ev] = await events(gw, broker)
    assert ev["stream"] is True and ev["status"] == "ok"


async def test_feedback_only_on_own_calls_unless_judge(stack) -> None:
    """Issue 19 (identity): feedback names a server-issued id of the caller's own call; a forged,
    foreign or expired id is a 404 (so retraining cannot be poisoned through others' calls), and
    only a judge key may send judge/rule feedback or grade any tenant's calls."""
    client, upstream, router, broker, gw = stack
    other = {"authorization": f"Bearer {OTHER_KEY}"}
    judge = {"authorization": f"Bearer {JUDGE_KEY}"}
    r = await client.post("/v1/chat/completions", json=body(), headers={"x-request-id": "SPOOFED-ID-0001"})
    rid = r.headers["x-switchyard-request-id"]
    assert rid != "SPOOFED-ID-0001"
    for who, req_id in [(other, rid), ({}, "SPOOFED-ID-0001"), ({}, rid[:-2] + "AA"), ({}, "req_1")]:
        r = await client.post("/v1/feedback", json={"request_id": req_id, "label": "bad"}, headers=who)
        assert r.status_code == 404 and r.json()["error"]["code"] == "request_not_found", r.text
    r = await client.post("/v1/feedback", json={"request_id": rid, "label": "bad", "source": "judge"})
    assert r.status_code == 403 and r.json()["error"]["param"] == "source"
    r = await client.post(
        "/v1/feedback", json={"request_id": rid, "score": 0.9, "source": "judge"}, headers=judge
    )
    assert r.status_code == 202, r.text
    gw.feedback_max_age_s = 1e-9  # the join's window has passed
    r = await client.post("/v1/feedback", json={"request_id": rid, "label": "good"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "request_expired"
    evs = await events(gw, broker)
    fbs = [FeedbackEvent.model_validate(e) for e in evs if "feedback_id" in e]
    assert [(f.source.value, f.score) for f in fbs] == [("judge", 0.9)]  # nothing else reached Kafka


async def test_feedback_models_health_and_metrics(stack) -> None:
    client, upstream, router, broker, gw = stack
    r = await client.post("/v1/chat/completions", json=body())
    rid = r.headers["x-switchyard-request-id"]
    assert r.json()["id"] == rid  # the completion id is the request id feedback names
    r = await client.post("/v1/feedback", json={"request_id": rid, "score": 0.2})
    assert r.status_code == 202, r.text
    r = await client.post("/v1/feedback", json={"request_id": rid})
    assert r.status_code == 400
    evs = await events(gw, broker)
    (call,) = [e for e in evs if "feedback_id" not in e]
    (fb,) = [e for e in evs if "feedback_id" in e]
    assert FeedbackEvent.model_validate(fb).score == 0.2 and fb["tenant"] == call["tenant"]
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert ids[0] == "switchyard/auto" and STRONG in ids
    one = (await client.get(f"/v1/models/{WEAK}")).json()  # ids with a slash
    assert one["id"] == WEAK and one["object"] == "model" and one["tier"]
    r = await client.get("/v1/models/no-such-model")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await client.get(f"/v1/models/{WEAK}", headers={"authorization": "Bearer nope"})
    assert r.status_code == 401
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json()["ready"] is True
    await client.post("/v1/chat/completions", json=body())
    text = (await client.get("/metrics")).text
    assert 'switchyard_routes_total{mode="route",model="mistralai/Mixtral-8x7B-Instruct-v0.1"' in text
    assert "switchyard_emitter_queue_depth" in text and "switchyard_request_latency_seconds_bucket" in text
    assert (await client.get("/nope")).json()["error"]["code"] == "not_found"


async def test_redaction_keeps_only_the_hash(stack, tmp_path) -> None:
    """Issue 19 (privacy): the prompt hash is keyed (HMAC with the deployment's key: a guessed
    prompt cannot be checked against it), and redaction covers every field with user text."""
    from services.contracts import prompt_hash
    from services.contracts.settings import PrivacySettings

    client, upstream, router, broker, gw = stack
    gw.service.redact_prompts = True
    r = await client.post("/v1/chat/completions", json=body())
    rid = r.headers["x-switchyard-request-id"]
    await client.post("/v1/feedback", json={"request_id": rid, "label": "bad", "comment": "my SSN is 123"})
    evs = await events(gw, broker)
    (call,) = [e for e in evs if "feedback_id" not in e]
    (fb,) = [e for e in evs if "feedback_id" in e]
    assert call["prompt"] is None and len(call["prompt_hash"]) == 64
    assert call["prompt_hash"] != prompt_hash("What is 2+2?")  # not a plain, dictionary-checkable hash
    assert call["prompt_hash"] == prompt_hash("What is 2+2?", PrivacySettings().key(tmp_path))
    assert fb["comment"] is None and "123" not in json.dumps(fb)


@pytest.mark.parametrize(("accept", "answered_by"), [(0.55, WEAK), (0.7, STRONG)])
async def test_cascade_accepts_at_the_routers_threshold_for_the_target(
    stack, accept: float, answered_by: str
) -> None:
    """gsm8k is a cascade by the catalog's task default; the cheap answer is accepted when the
    router's answer scorer clears the threshold the router fitted for the request's target."""
    client, upstream, router, broker, gw = stack
    svc = gw.service
    seen: list[float] = []

    async def route_with_table(req: RouteRequest) -> RouteResult:
        seen.append(req.quality_target)
        res = await router.route(req)
        return dataclasses.replace(res, cascade_model=WEAK, cascade_accept=accept)

    async def router_score(question: str, answer: str, model: str) -> float | None:
        return 0.6 if model == WEAK else None

    svc.route_fn = route_with_table
    svc.scorer.router_score = router_score
    r = await client.post(
        "/v1/chat/completions", json=body(switchyard={"task": "gsm8k", "quality_target": 0.9})
    )
    assert r.status_code == 200 and r.headers["x-switchyard-route"] == "cascade"
    assert r.json()["model"] == answered_by and seen == [0.9]
    [ev] = await events(gw, broker)
    assert ev["attempts"][0]["model"] == WEAK and ev["attempts"][0]["accepted_score"] == pytest.approx(0.6)
    assert ev["escalated"] is (answered_by == STRONG)


async def test_one_request_id_reaches_the_router_and_every_upstream_call(stack) -> None:
    client, upstream, router, broker, gw = stack
    upstream.fail.add(WEAK)  # the routed model fails: the fallback call must carry the id too
    r = await client.post("/v1/chat/completions", json=body())
    assert r.status_code == 200, r.text
    rid = r.headers["x-switchyard-request-id"]
    assert router.seen[-1].request_id == rid
    assert len(upstream.request_ids) >= 2 and set(upstream.request_ids) == {rid}
    upstream.fail.clear()
    upstream.request_ids.clear()
    s = await client.post("/v1/chat/completions", json=body(stream=True, switchyard={"mode": "route"}))
    assert s.status_code == 200
    assert set(upstream.request_ids) == {s.headers["x-switchyard-request-id"]} != {rid}


async def test_a_zero_quality_target_is_kept_not_replaced_by_the_default(stack) -> None:
    client, upstream, router, broker, gw = stack
    r = await client.post("/v1/chat/completions", json=body(switchyard={"quality_target": 0.0}))
    assert r.status_code == 200, r.text
    assert router.seen[-1].quality_target == 0.0
    r = await client.post("/v1/chat/completions", json=body(switchyard={"task": "astronomy"}))
    assert router.seen[-1].quality_target == CATALOG.task_defaults("astronomy").quality_target


async def test_every_error_response_carries_a_request_id(stack) -> None:
    client, upstream, router, broker, gw = stack
    bad_json = await client.post("/v1/chat/completions", content=b"{nope")
    no_key = await client.post("/v1/chat/completions", json=body(), headers={"authorization": "Bearer x"})
    missing = await client.get("/nope")
    upstream.fail.update({WEAK, STRONG, "claude-v2"})
    failed = await client.post("/v1/chat/completions", json=body())
    ids = [r.headers.get("x-switchyard-request-id") for r in (bad_json, no_key, missing, failed)]
    assert [r.status_code for r in (bad_json, no_key, missing, failed)] == [400, 401, 404, 502]
    assert all(ids) and len(set(ids)) == 4
    [ev] = await events(gw, broker)
    assert ev["request_id"] == ids[3]  # the failed call's event is found by the id its client got


async def test_readiness_is_degraded_not_unready_while_requests_are_served(stack) -> None:
    client, upstream, router, broker, gw = stack
    status = {"loaded": False, "failed_swaps": 0}

    async def router_status() -> dict:
        return status

    gw.router_status = router_status
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False  # starting: no load attempt finished
    status["failed_swaps"] = 1  # the router could not be loaded: the default model answers
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "degraded"
    assert CATALOG.default_model in r.json()["reason"] and "prior" in r.json()["reason"]
    status.update(loaded=True, restored="mlp-abc", last_error="RouterLoadFailed: corrupt")
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "degraded" and "mlp-abc" in r.json()["reason"]

    async def hung() -> dict:
        await asyncio.sleep(30)
        return {}

    gw.router_status, gw.health_timeout_s = hung, 0.2
    t0 = asyncio.get_running_loop().time()
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "degraded"  # a router was seen loaded before
    assert asyncio.get_running_loop().time() - t0 < 2  # a hung router replica never hangs health checks
    gw.router_seen = False  # a fresh ingress whose router replica has never answered: still starting
    assert (await client.get("/readyz")).status_code == 503


_HI = b'"messages":[{"role":"user","content":"hi"}]'
HOSTILE = {
    "a text part that is a number": b'"messages":[{"role":"user","content":[{"type":"text","text":5}]}]',
    "a text part that is null": b'"messages":[{"role":"user","content":[{"type":"text","text":null}]}]',
    "a lone surrogate": b'"messages":[{"role":"user","content":"hi \\ud800"}]',
    "temperature 1e999": _HI + b',"temperature":1e999',
    "temperature NaN": _HI + b',"temperature":NaN',
    "temperature hot": _HI + b',"temperature":"hot"',
    "JSON nested 3,000 deep": _HI + b',"x":' + b"[" * 3000 + b"]" * 3000,
    "stream_options a string": _HI + b',"stream":true,"stream_options":"x"',
    "max_tokens abc to an Anthropic model": _HI + b',"max_tokens":"abc","model":"claude-v2"',
    "max_tokens -5": _HI + b',"max_tokens":-5,"model":"claude-v2"',
    "stream yes": _HI + b',"stream":"yes"',
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_bad_parameters_are_a_400_in_openai_shape_and_reach_no_upstream(stack, case: str) -> None:
    client, upstream, router, broker, gw = stack
    raw = b'{"model":"switchyard/auto",' + HOSTILE[case] + b"}"  # a later "model" key wins
    r = await client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, (case, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert r.headers["x-switchyard-request-id"]
    assert upstream.calls == [] and router.seen == []  # refused before routing or any upstream call


async def test_stream_options_null_is_absent_as_in_openai(stack) -> None:
    client, upstream, router, broker, gw = stack
    r = await client.post("/v1/chat/completions", json=body(stream=True, stream_options=None))
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


async def test_request_ids_are_the_servers_and_a_callers_id_is_kept_beside_them(stack) -> None:
    # two calls with the same forged id: two server ids (the join keeps both), the caller's id kept
    client, upstream, router, broker, gw = stack
    ids = []
    for header in ("x-request-id", "x-client-request-id"):
        r = await client.post("/v1/chat/completions", json=body(), headers={header: "SPOOFED-ID-0001"})
        assert r.status_code == 200 and r.headers["x-client-request-id"] == "SPOOFED-ID-0001"
        ids.append(r.headers["x-switchyard-request-id"])
    assert len(set(ids)) == 2 and all(i.startswith("req_") and i != "SPOOFED-ID-0001" for i in ids)
    evs = await events(gw, broker)
    assert [e["request_id"] for e in evs] == ids
    assert [e["client_request_id"] for e in evs] == ["SPOOFED-ID-0001"] * 2
    assert upstream.request_ids == ids  # upstreams see our id too
    r = await client.post("/v1/chat/completions", json=body(), headers={"x-client-request-id": "a b"})
    assert r.status_code == 400 and "X-Client-Request-Id" in r.json()["error"]["message"]


async def test_a_405_says_which_methods_are_allowed(stack) -> None:
    client, upstream, router, broker, gw = stack
    r = await client.get("/v1/chat/completions")
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_context_windows_route_to_a_candidate_that_fits_or_refuse(stack) -> None:
    client, upstream, router, broker, gw = stack
    # the router chose the weak model (32k window); a request for 40k tokens goes to the next
    # candidate of its ranking that takes it
    r = await client.post("/v1/chat/completions", json=body(max_tokens=40_000))
    assert r.status_code == 200 and r.json()["model"] == STRONG
    assert WEAK not in upstream.calls
    # nothing takes 200k tokens: a 400 in OpenAI's words, before any upstream call
    calls = len(upstream.calls)
    r = await client.post("/v1/chat/completions", json=body(max_tokens=200_000))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # a concrete model whose window is too small is refused, not swapped for another
    r = await client.post(
        "/v1/chat/completions", json=body(model="WizardLM/WizardLM-13B-V1.2", max_tokens=5000)
    )
    assert r.status_code == 400 and "WizardLM/WizardLM-13B-V1.2 takes 4096" in r.json()["error"]["message"]
    assert len(upstream.calls) == calls
    # each refusal is counted once in switchyard_errors_total (the call's and the handler's count
    # used to add up to two)
    sample = gw.metrics.registry.get_sample_value
    assert sample("switchyard_errors_total", {"status": "400", "code": "context_length_exceeded"}) == 2


async def test_the_tenant_knob_is_a_label_and_never_the_callers_identity(stack) -> None:
    client, upstream, router, broker, gw = stack
    r = await client.post("/v1/chat/completions", json=body(switchyard={"tenant": "someone-else"}))
    assert r.status_code == 200
    [ev] = await events(gw, broker)
    assert ev["client_tenant"] == "someone-else" and ev["tenant"] != "someone-else"
    assert ev["tenant"] == gw.keys.authenticate(f"Bearer {KEY}").key_id


async def test_failed_authentication_is_rate_limited_per_source(stack, monkeypatch) -> None:
    # guessing keys from one address: after the failure budget every request from it is a 429,
    # a valid key included, until the budget refills
    import time

    from services.gateway.ratelimit import AuthFailureLimiter

    client, upstream, router, broker, gw = stack
    now = [60_000.0 * 60]  # the start of a minute (the store's windows are aligned to the clock)
    monkeypatch.setattr(time, "time", lambda: now[0])
    gw.auth_failures = AuthFailureLimiter(per_minute=3, store=gw.limiter.store)
    guess = {"authorization": "Bearer guess"}
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=body(), headers=guess)).status_code == 401
    r = await client.post("/v1/chat/completions", json=body(), headers=guess)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    r = await client.post("/v1/chat/completions", json=body())  # the right key, same address
    assert r.status_code == 429 and "failed authentications" in r.json()["error"]["message"]
    assert (await client.get("/healthz")).status_code == 200  # health never needs a key
    now[0] += 90.0  # a sliding minute: half-way through the next one 1.5 failures are back
    assert (await client.post("/v1/chat/completions", json=body())).status_code == 200


async def test_task_labels_are_bounded_and_router_info_is_set(stack) -> None:
    """Issue 19 (metrics): 30 client-invented task names add no series (they are ``other``); a
    catalog task keeps its own label; ``switchyard_router_info`` names the version that routes."""
    client, upstream, router, broker, gw = stack
    for i in range(30):
        r = await client.post("/v1/chat/completions", json=body(switchyard={"task": f"made-up-{i}"}))
        assert r.status_code == 200
    known = next(iter(CATALOG.tasks), None)
    if known:
        await client.post("/v1/chat/completions", json=body(switchyard={"task": known}))
    text = (await client.get("/metrics")).text
    assert "made-up-" not in text and 'task="other"' in text
    if known:
        assert f'task="{known}"' in text
    assert 'switchyard_router_info{version="v-test"} 1.0' in text


async def test_a_client_that_disconnects_mid_body_is_not_a_server_error(stack) -> None:
    """Issue 19 (metrics): a body cut off by the client is a 499 (client closed request), counted
    as such and never as a 500."""
    from starlette.requests import ClientDisconnect

    client, upstream, router, broker, gw = stack

    async def cut():  # noqa: ANN202 - an upload that stops: Starlette raises ClientDisconnect
        yield b'{"model": "switchyard/auto", '
        raise ClientDisconnect()

    r = await client.post("/v1/chat/completions", content=cut(), headers={"content-type": "application/json"})
    assert r.status_code == 499 and r.json()["error"]["code"] == "client_closed_request"
    text = (await client.get("/metrics")).text
    assert 'status="499"' in text and 'status="500"' not in text


async def test_metrics_and_api_description_need_a_key_unless_public(stack, tmp_path) -> None:
    """Issue 19 (exposure): /metrics (models, tasks, spend) and /openapi.json answer key holders
    only, the Swagger UI is off; each can be opened deliberately by a setting."""
    client, upstream, router, broker, gw = stack
    anon = httpx.AsyncClient(transport=client._transport, base_url="http://gw")
    assert (await anon.get("/metrics")).status_code == 401
    assert (await anon.get("/openapi.json")).status_code == 401
    assert (await anon.get("/docs")).status_code == 404
    assert (await anon.get("/healthz")).status_code == 200  # probes need no key
    assert (await client.get("/metrics")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/chat/completions" in spec["paths"]
    settings = GatewaySettings(
        metrics_public=True,
        docs_public=True,
        api_key_hashes=[hash_key(KEY)],
        state_dir=tmp_path,
        events_enabled=False,
    )
    open_gw = build_gateway(settings, router.route, router.status, catalog=CATALOG)
    opened = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(open_gw)), base_url="http://gw")
    assert (await opened.get("/metrics")).status_code == 200
    assert (await opened.get("/openapi.json")).status_code == 200
    assert (await opened.get("/docs")).status_code == 200


async def test_max_cost_usd_is_a_hard_cap(stack) -> None:
    """Issue 19: ``max_cost_usd`` caps what the gateway spends upstream on the request: models it
    cannot pay for are never called, the call's completion limit keeps prompt + answer within it,
    and a 400 when no candidate fits."""
    client, upstream, router, broker, gw = stack
    # "What is 2+2?" is bounded at 12 prompt tokens; GPT-4 costs $24.7/M both ways
    r = await client.post("/v1/chat/completions", json=body(model=STRONG, switchyard={"max_cost_usd": 0.001}))
    assert r.status_code == 200, r.text
    assert upstream.bodies[-1]["max_tokens"] == 28  # (0.001 - 12 x 24.7e-6) / 24.7e-6
    assert float(r.headers["x-switchyard-cost-usd"]) <= 0.001
    # a cap GPT-4 cannot meet: a pass-through to it is refused, nothing is called
    calls = len(upstream.calls)
    capped = body(model=STRONG, switchyard={"max_cost_usd": 0.0003})
    r = await client.post("/v1/chat/completions", json=capped)
    assert r.status_code == 400 and r.json()["error"]["code"] == "max_cost_exceeded"
    assert r.json()["error"]["param"] == "max_cost_usd" and len(upstream.calls) == calls
    # routed, the router's choice of GPT-4 gives way to the model the cap can pay for
    router.choose = STRONG
    r = await client.post("/v1/chat/completions", json=body(switchyard={"max_cost_usd": 0.0003}))
    assert r.status_code == 200 and r.json()["model"] == WEAK and STRONG not in upstream.calls[calls:]
    # nothing fits at all
    r = await client.post("/v1/chat/completions", json=body(switchyard={"max_cost_usd": 1e-9}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "max_cost_exceeded"
    # a cap at the top of the float range is no limit, not a 500 (found by the fuzzer: the tokens it
    # leaves overflowed an int)
    r = await client.post("/v1/chat/completions", json=body(switchyard={"max_cost_usd": 9.8e307}))
    assert r.status_code == 200, r.text


async def test_the_tenant_comes_from_the_keys_configuration(tmp_path) -> None:
    """Issue 19 (identity): a key's tenant is configured server-side; keys of one tenant may grade
    each other's calls, the ``tenant`` knob only lands in ``client_tenant``."""
    upstream, router, broker = Upstream(), FakeRouter(), Broker()
    pool = ProviderPool(CATALOG, adapters=mock_adapters(CATALOG, httpx.MockTransport(upstream)))
    emitter = EventEmitter(
        EmitterConfig(bootstrap="x:1", spool_dir=tmp_path / "spool"), lambda: FakeProducer(broker)
    )
    settings = GatewaySettings(
        api_key_hashes=[hash_key(KEY), hash_key(OTHER_KEY)],
        key_tenants={hash_key(KEY): "acme", hash_key(OTHER_KEY): "acme"},
        state_dir=tmp_path,
    )
    gw = build_gateway(settings, router.route, router.status, catalog=CATALOG, pool=pool, emitter=emitter)
    app = httpx.ASGITransport(app=create_app(gw))
    a, b = (
        httpx.AsyncClient(transport=app, base_url="http://gw", headers={"authorization": f"Bearer {k}"})
        for k in (KEY, OTHER_KEY)
    )
    r = await a.post("/v1/chat/completions", json=body(switchyard={"tenant": "forged"}))
    rid = r.headers["x-switchyard-request-id"]
    assert (await b.post("/v1/feedback", json={"request_id": rid, "label": "good"})).status_code == 202
    evs = await events(gw, broker)
    (call,) = [e for e in evs if "feedback_id" not in e]
    (fb,) = [e for e in evs if "feedback_id" in e]
    assert call["tenant"] == fb["tenant"] == "acme" and call["client_tenant"] == "forged"
    with pytest.raises(ValueError, match="key_tenants"):
        GatewaySettings(key_tenants={"not-a-hash": "acme"})

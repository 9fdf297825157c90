"""OpenAI compatibility through the gateway in-process, against the emulator's own ASGI app (both
wire protocols, no sockets): tool calls both ways on Anthropic-kind models, streaming included;
400s naming what a pass-through model cannot honour; ``switchyard/auto`` leaving such models out;
cascade and hybrid streams carrying every choice and tool call; billed usage; one stream id."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from infra.emulator.app import EmulatorApp
from infra.emulator.core import Emulator
from infra.emulator.corpus import Corpus
from services.catalog import load_catalog
from services.gateway.app import create_app
from services.gateway.bootstrap import build_gateway
from services.gateway.emitter import EmitterConfig, EventEmitter
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import Broker, FakeProducer, FakeRouter, mock_adapters
from services.providers.pool import ProviderPool, RetryPolicy

CATALOG = load_catalog()
STRONG, WEAK, CLAUDE = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", "claude-v2"
ANTHROPIC = {m.id for m in CATALOG.models if CATALOG.provider(m.provider).kind == "anthropic"}
KEY = "sk-compat"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Recorder:
    """The emulator's ASGI app, recording each upstream request body by path."""

    def __init__(self, app: EmulatorApp) -> None:
        self.transport = httpx.ASGITransport(app=app)
        self.requests: list[tuple[str, dict]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.path, json.loads(request.content)))
        return await self.transport.handle_async_request(request)

    async def set_faults(self, model: str, **spec) -> None:
        async with httpx.AsyncClient(transport=self.transport, base_url="http://emulator") as admin:
            (await admin.post("/emulator/faults", json={"model": model, **spec})).raise_for_status()

    def to(self, model: str) -> list[dict]:
        return [body for _, body in self.requests if body.get("model") == model]


def _stack(tmp_path: Path, catalog=CATALOG, scores: list[float] | None = None):
    upstream = Recorder(EmulatorApp(Emulator(Corpus([]), catalog, speed=0.0), chunk_words=2))
    router, broker = FakeRouter(), Broker()
    pool = ProviderPool(
        catalog,
        retry=RetryPolicy(initial_s=0.001, max_s=0.001, jitter_s=0),
        adapters=mock_adapters(catalog, upstream),
    )
    emitter = EventEmitter(
        EmitterConfig(bootstrap="x:1", spool_dir=tmp_path / "spool"), lambda: FakeProducer(broker)
    )
    graded: list[str] = []
    verdicts = list(scores or [])

    async def answer_score(question: str, answer: str, model: str) -> float | None:
        graded.append(answer)
        return verdicts.pop(0) if verdicts else 1.0

    settings = GatewaySettings(
        api_key_hashes=[hash_key(KEY)], rate_limit_rps=100, rate_limit_burst=100, explore_enabled=False
    )
    gw = build_gateway(
        settings,
        router.route,
        router.status,
        catalog=catalog,
        pool=pool,
        emitter=emitter,
        answer_score=answer_score,
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gw)),
        base_url="http://gw",
        headers={"authorization": f"Bearer {KEY}"},
    )
    return client, upstream, router, broker, gw, graded


@pytest.fixture
def stack(tmp_path: Path):
    return _stack(tmp_path)


async def _events(gw, broker) -> list[dict]:
    assert await gw.service.emitter.flush(5)
    return [json.loads(v) for _, _, v in broker.log]


async def _stream(client: httpx.AsyncClient, body: dict) -> list[dict]:
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def _assemble(chunks: list[dict]) -> dict[int, dict]:
    """Per choice index: its text, its tool calls (by index: id, name, arguments), its finish."""
    out: dict[int, dict] = {}
    for c in chunks:
        for ch in c["choices"]:
            got = out.setdefault(ch["index"], {"text": "", "calls": {}, "finish": None})
            delta = ch["delta"]
            got["text"] += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = got["calls"].setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            got["finish"] = ch["finish_reason"] or got["finish"]
    return out


async def test_a_tool_loop_through_an_anthropic_model(stack) -> None:
    client, upstream, router, broker, gw, _ = stack
    r = await client.post(
        "/v1/chat/completions", json={"model": CLAUDE, "messages": ASK, "tools": [WEATHER], "user": "u-1"}
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": ASK[0]["content"]}
    [sent] = upstream.to(CLAUDE)
    assert sent["tools"][0]["input_schema"] == WEATHER["function"]["parameters"]
    assert sent["tool_choice"] == {"type": "auto"} and sent["metadata"] == {"user_id": "u-1"}
    # the second turn hands the result back: the emulator checks the tool_use/tool_result pairing
    follow = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"},
    ]
    r = await client.post(
        "/v1/chat/completions", json={"model": CLAUDE, "messages": follow, "tools": [WEATHER]}
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert (
        choice["finish_reason"] == "stop"
        and choice["message"]["content"]
        and "tool_calls" not in choice["message"]
    )
    sent = upstream.to(CLAUDE)[-1]["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use" and sent[2]["content"][0]["type"] == "tool_result"


async def test_a_streamed_tool_call_from_an_anthropic_model(stack) -> None:
    client, *_ = stack
    chunks = await _stream(
        client,
        {
            "model": CLAUDE,
            "messages": ASK,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "stream_options": {"include_usage": True},
        },
    )
    [got] = _assemble(chunks).values()
    [call] = got["calls"].values()
    assert call["id"].startswith("toolu_") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": ASK[0]["content"]} and got["finish"] == "tool_calls"
    assert len({c["id"] for c in chunks}) == 1  # the usage chunk carries the stream's id too
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and chunks[-1]["choices"] == []


async def test_json_answers_through_an_anthropic_model(stack) -> None:
    client, upstream, *_ = stack
    body = {"model": CLAUDE, "messages": ASK, "response_format": {"type": "json_object"}}
    r = await client.post("/v1/chat/completions", json=body)
    choice = r.json()["choices"][0]
    assert set(json.loads(choice["message"]["content"])) == {"answer"} and choice["finish_reason"] == "stop"
    [got] = _assemble(await _stream(client, body)).values()
    assert json.loads(got["text"]) == json.loads(choice["message"]["content"]) and got["finish"] == "stop"
    assert upstream.to(CLAUDE)[0]["tool_choice"] == {"type": "tool", "name": "json_response"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"seed": 1}, "seed"),
        ({"presence_penalty": 0.4}, "presence_penalty"),
        ({"metadata": {"team": "a"}}, "metadata"),
        ({"temperature": 1.7}, "temperature"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True}}},
            "response_format",
        ),
    ],
)
async def test_a_pass_through_anthropic_model_refuses_what_it_cannot_honour(stack, extra, param) -> None:
    client, upstream, router, broker, gw, _ = stack
    r = await client.post("/v1/chat/completions", json={"model": CLAUDE, "messages": ASK, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "unsupported_parameter" and err["param"] == param and CLAUDE in err["message"]
    assert upstream.requests == [] and broker.log == []


async def test_a_pass_through_fallback_that_cannot_honour_the_request_is_skipped(stack) -> None:
    """gpt-4's catalog fallback is claude-v2: with n=2 it must not answer (one choice, silently)."""
    client, upstream, router, broker, gw, _ = stack
    await upstream.set_faults(STRONG, error_rate=1.0, error_statuses=[503])
    r = await client.post("/v1/chat/completions", json={"model": STRONG, "messages": ASK, "n": 2})
    assert r.status_code == 502 and upstream.to(STRONG) and upstream.to(CLAUDE) == []
    r = await client.post("/v1/chat/completions", json={"model": STRONG, "messages": ASK})
    assert r.status_code == 200 and r.json()["model"] == CLAUDE  # without n, the fallback answers


async def test_switchyard_auto_leaves_out_models_that_cannot_honour_the_request(stack) -> None:
    client, upstream, router, broker, gw, _ = stack
    router.choose = CLAUDE  # the router's pick cannot give two choices: the next capable one answers
    r = await client.post("/v1/chat/completions", json={"model": "switchyard/auto", "messages": ASK, "n": 2})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == STRONG and [c["index"] for c in r.json()["choices"]] == [0, 1]
    assert router.seen[-1].exclude == ANTHROPIC and upstream.to(CLAUDE) == []
    [ev] = await _events(gw, broker)
    assert [a["model"] for a in ev["attempts"]] == [STRONG]
    # without such a parameter nothing is excluded and the router's pick answers
    r = await client.post(
        "/v1/chat/completions", json={"model": "switchyard/auto", "messages": ASK, "tools": [WEATHER]}
    )
    assert r.json()["model"] == CLAUDE and router.seen[-1].exclude == frozenset()


async def test_switchyard_auto_with_no_capable_candidate_is_a_400(tmp_path: Path) -> None:
    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "services" / "catalog.yaml").read_text())
    raw["tasks"]["support"] = {"candidates": ["claude-instant-v1", "claude-v2"]}
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(raw))
    client, upstream, router, broker, gw, _ = _stack(tmp_path, load_catalog(tmp_path / "catalog.yaml"))
    body = {"model": "switchyard/auto", "messages": ASK, "logprobs": True, "switchyard": {"task": "support"}}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    assert "no candidate" in r.json()["error"]["message"] and upstream.requests == []


async def test_a_cascade_stream_carries_tool_calls_and_bills_every_rung(tmp_path: Path) -> None:
    client, upstream, router, broker, gw, graded = _stack(
        tmp_path, scores=[0.0]
    )  # the cheap rung is rejected
    body = {
        "model": "switchyard/auto",
        "messages": ASK,
        "tools": [WEATHER],
        "switchyard": {"mode": "cascade"},
        "stream_options": {"include_usage": True},
    }
    chunks = await _stream(client, body)
    [got] = _assemble(chunks).values()
    [call] = got["calls"].values()
    assert call["id"].startswith("call_") and call["name"] == "get_weather" and got["finish"] == "tool_calls"
    assert json.loads(call["arguments"]) == {"city": ASK[0]["content"]}
    assert "get_weather(" in graded[0]  # the scorer judged the cheap rung's tool call, not an empty text
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {STRONG}
    [ev] = await _events(gw, broker)
    assert [(a["model"], a["status"]) for a in ev["attempts"]] == [(WEAK, "rejected"), (STRONG, "ok")]
    billed = chunks[-1]["usage"]
    assert (
        billed["prompt_tokens"]
        == sum(a["prompt_tokens"] for a in ev["attempts"])
        == ev["usage"]["prompt_tokens"]
    )
    assert billed["completion_tokens"] == sum(a["completion_tokens"] for a in ev["attempts"]) > 0
    assert all(a["prompt_tokens"] > 0 for a in ev["attempts"])


async def test_a_cascade_answer_reports_the_usage_of_every_rung(tmp_path: Path) -> None:
    client, upstream, router, broker, gw, _ = _stack(tmp_path, scores=[0.0])
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "switchyard/auto", "messages": ASK, "switchyard": {"mode": "cascade"}},
    )
    [ev] = await _events(gw, broker)
    usage = r.json()["usage"]
    assert len(ev["attempts"]) == 2 and usage["prompt_tokens"] == ev["usage"]["prompt_tokens"]
    assert usage["completion_tokens"] == ev["usage"]["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("mode", ["cascade", "hybrid"])
async def test_cascade_and_hybrid_streams_carry_every_choice(stack, mode: str) -> None:
    client, *_ = stack
    body = {"model": "switchyard/auto", "messages": ASK, "n": 3, "switchyard": {"mode": mode}}
    got = _assemble(await _stream(client, body))
    assert sorted(got) == [0, 1, 2] and all(g["text"] and g["finish"] == "stop" for g in got.values())


async def test_the_usage_chunk_has_the_id_of_the_stream(stack) -> None:
    client, *_ = stack
    for model in (STRONG, CLAUDE):
        chunks = await _stream(
            client, {"model": model, "messages": ASK, "stream_options": {"include_usage": True}}
        )
        assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
        assert "usage" in chunks[-1] and chunks[0]["id"]


async def test_tool_messages_must_name_their_call(stack) -> None:
    client, *_ = stack
    msgs = [*ASK, {"role": "tool", "content": "18C"}]
    r = await client.post("/v1/chat/completions", json={"model": STRONG, "messages": msgs})
    assert r.status_code == 400 and "tool_call_id" in r.json()["error"]["message"]
    r = await client.post(
        "/v1/chat/completions", json={"model": STRONG, "messages": ASK, "tool_choice": "required"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


class _Scores:
    version = "v-x"
    models = [STRONG, WEAK, CLAUDE]

    def scores(self, queries):
        return [{STRONG: 0.95, WEAK: 0.5, CLAUDE: 0.94} for _ in queries]


def test_the_router_runtime_never_chooses_an_excluded_model() -> None:
    from services.gateway.routing import RouteRequest, RouterRuntime

    rt = RouterRuntime(CATALOG, lambda ref: _Scores())
    rt.swap("v-x")
    [free] = rt.route([RouteRequest("q", None, 0.9)])
    assert free.model == CLAUDE  # the cheapest over the line
    [kept_out] = rt.route([RouteRequest("q", None, 0.9, exclude=frozenset(ANTHROPIC))])
    assert kept_out.model == STRONG and CLAUDE not in kept_out.ranking
    [none_left] = rt.route([RouteRequest("q", None, 0.9, candidates=[CLAUDE], exclude=frozenset({CLAUDE}))])
    assert isinstance(none_left, Exception)


async def test_a_task_prior_never_draws_an_excluded_model() -> None:
    from services.gateway.degrade import RouteChain, TaskPriors
    from services.gateway.routing import RouteRequest

    async def down(rr):
        raise RuntimeError("router down")

    priors = TaskPriors(half_life=10, min_decisions=1)
    for _ in range(5):
        priors.observe("t", CLAUDE)
    chain = RouteChain(CATALOG, down, timeout_s=0.1, priors=priors)
    assert (await chain.route(RouteRequest("q", "t", 0.9))).model == CLAUDE
    routed = await chain.route(RouteRequest("q", "t", 0.9, exclude=frozenset({CLAUDE})))
    assert routed.model == CATALOG.default_model and routed.source.value == "default"

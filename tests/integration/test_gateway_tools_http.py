"""OpenAI compatibility end to end over real HTTP: the gateway's app served by uvicorn, the real
provider pool (aiohttp wire) calling the emulator subprocess in both wire protocols, and the
official ``openai`` client. Tool loops through an Anthropic-kind model, streamed and not; JSON
answers; a 400 naming what a model cannot honour; ``switchyard/auto`` leaving such models out; a
cascade stream with tool calls and the usage of every rung under one stream id."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from gateway_stack import emulator_catalog

from services.catalog import load_catalog
from services.gateway.app import create_app
from services.gateway.bootstrap import build_gateway
from services.gateway.emitter import EmitterConfig, EventEmitter
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import Broker, FakeProducer, FakeRouter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = "sk-tools-1"
EMULATOR_PORT, GATEWAY_PORT = 33411, 33412
STRONG, WEAK, CLAUDE = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", "claude-v2"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What's the weather like in Lisbon today?"}]


@pytest.fixture(scope="module")
def emulator(data_dir):
    from infra.emulator.testing import run_emulator

    with run_emulator(data_dir=data_dir, chunk_words=3, port=EMULATOR_PORT) as emu:
        yield emu


@pytest.fixture(scope="module")
def gateway(emulator, tmp_path_factory):
    """The gateway app on uvicorn in a thread; its router is a fixed fake, its events go to an
    in-memory broker the tests read."""
    tmp = tmp_path_factory.mktemp("gw-tools")
    catalog = load_catalog(emulator_catalog(tmp, emulator.base_url))
    router, broker = FakeRouter(), Broker()
    emitter = EventEmitter(
        EmitterConfig(bootstrap="x:1", spool_dir=tmp / "spool"), lambda: FakeProducer(broker)
    )
    verdicts: list[float] = []

    async def answer_score(question: str, answer: str, model: str) -> float | None:
        return verdicts.pop(0) if verdicts else None

    settings = GatewaySettings(
        api_key_hashes=[hash_key(KEY)], rate_limit_rps=200, rate_limit_burst=200, explore_enabled=False
    )
    gw = build_gateway(
        settings, router.route, router.status, catalog=catalog, emitter=emitter, answer_score=answer_score
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(gw), host="127.0.0.1", port=GATEWAY_PORT, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    yield {
        "router": router,
        "broker": broker,
        "verdicts": verdicts,
        "url": f"http://127.0.0.1:{GATEWAY_PORT}",
    }
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    gateway["router"].choose = WEAK
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=KEY, max_retries=0, timeout=30)


def _events(gateway, request_id: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [
            json.loads(v)
            for _, _, v in list(gateway["broker"].log)
            if json.loads(v).get("request_id") == request_id
        ]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_a_tool_loop_through_an_anthropic_model(client) -> None:
    first = client.chat.completions.create(model=CLAUDE, messages=ASK, tools=[WEATHER], user="end-user-1")
    choice = first.choices[0]
    assert first.model == CLAUDE and choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("toolu_")
    assert json.loads(call.function.arguments) == {"city": ASK[0]["content"], "unit": "celsius"}
    follow = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    second = client.chat.completions.create(model=CLAUDE, messages=follow, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    assert not second.choices[0].message.tool_calls


def test_a_streamed_tool_call_through_an_anthropic_model(client) -> None:
    stream = client.chat.completions.create(
        model=CLAUDE,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls: dict[int, dict] = {}
    for c in chunks:
        for ch in c.choices:
            for d in ch.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = d.id or slot["id"]
                slot["name"] += (d.function.name or "") if d.function else ""
                slot["arguments"] += (d.function.arguments or "") if d.function else ""
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("toolu_")
    assert json.loads(calls[0]["arguments"])["city"] == ASK[0]["content"]
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1  # the usage chunk has the stream's id


def test_json_answers_through_an_anthropic_model(client) -> None:
    r = client.chat.completions.create(model=CLAUDE, messages=ASK, response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop" and "answer" in json.loads(r.choices[0].message.content)


def test_what_an_anthropic_model_cannot_honour_is_a_400_naming_it(client) -> None:
    for kwargs, param in [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"seed": 3}, "seed")]:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=CLAUDE, messages=ASK, **kwargs)
        body = err.value.body
        assert body["code"] == "unsupported_parameter" and body["param"] == param, body


def test_switchyard_auto_leaves_out_models_that_cannot_honour_the_request(client, gateway) -> None:
    gateway["router"].choose = CLAUDE
    raw = client.chat.completions.with_raw_response.create(model="switchyard/auto", messages=ASK, n=2)
    r = raw.parse()
    assert r.model != CLAUDE and [c.index for c in r.choices] == [0, 1]
    [ev] = _events(gateway, raw.headers["x-switchyard-request-id"])
    assert CLAUDE not in [a["model"] for a in ev["attempts"]]
    tools = client.chat.completions.create(model="switchyard/auto", messages=ASK, tools=[WEATHER])
    assert tools.model == CLAUDE and tools.choices[0].message.tool_calls  # tools alone: Claude can


def test_a_cascade_stream_carries_tool_calls_and_bills_every_rung(client, gateway) -> None:
    gateway["verdicts"][:] = [0.0]  # the cheap rung's answer is rejected
    with httpx.stream(
        "POST",
        gateway["url"] + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={
            "model": "switchyard/auto",
            "messages": ASK,
            "tools": [WEATHER],
            "stream": True,
            "stream_options": {"include_usage": True},
            "switchyard": {"mode": "cascade"},
        },
        timeout=30,
    ) as r:
        assert r.status_code == 200
        request_id = r.headers["x-switchyard-request-id"]
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [ch["delta"] for c in chunks for ch in c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert calls and calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {STRONG}
    [ev] = _events(gateway, request_id)
    assert [(a["model"], a["status"]) for a in ev["attempts"]] == [(WEAK, "rejected"), (STRONG, "ok")]
    usage = chunks[-1]["usage"]
    assert (
        usage["prompt_tokens"]
        == sum(a["prompt_tokens"] for a in ev["attempts"])
        == ev["usage"]["prompt_tokens"]
    )
    assert usage["completion_tokens"] == sum(a["completion_tokens"] for a in ev["attempts"])

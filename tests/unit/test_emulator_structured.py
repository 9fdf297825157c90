"""The emulator's tools, ``n`` and JSON answers, in both wire protocols (the ASGI app in-process):
deterministic tool calls while tools are offered, text once a tool's result is handed back,
``n`` choices, schema-shaped JSON, and the Messages API's own refusals."""

from __future__ import annotations

import json

import httpx
import pytest

from infra.emulator.app import EmulatorApp
from infra.emulator.core import Emulator
from infra.emulator.corpus import Corpus
from infra.emulator.structured import fill
from services.catalog import load_catalog

GPT, CLAUDE = "gpt-4-1106-preview", "claude-v2"
ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"enum": ["c", "f"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}}
ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": PARAMS}
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture
async def emu():
    app = EmulatorApp(Emulator(Corpus([]), load_catalog(), speed=0.0), chunk_words=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu") as client:
        yield client


async def _sse(emu: httpx.AsyncClient, path: str, body: dict, headers: dict | None = None) -> list[dict]:
    r = await emu.post(path, json={**body, "stream": True}, headers=headers or {})
    assert r.status_code == 200, r.text
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def test_values_follow_the_schema() -> None:
    assert fill(PARAMS, "q", "a") == {"city": "q", "days": 0, "unit": "c", "tags": ["q"]}
    assert fill({"type": "object"}, "q", "the answer") == {"answer": "the answer"}
    assert (
        fill({"type": ["null", "number"]}, "q", "a") == 0
        and fill({"anyOf": [{"type": "boolean"}]}, "q", "a") is False
    )


async def test_openai_tool_call_then_text_after_the_result(emu) -> None:
    r = (
        await emu.post("/v1/chat/completions", json={"model": GPT, "messages": ASK, "tools": [OPENAI_TOOL]})
    ).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {
        "city": "Weather in Oslo?",
        "days": 0,
        "unit": "c",
        "tags": ["Weather in Oslo?"],
    }
    again = (
        await emu.post("/v1/chat/completions", json={"model": GPT, "messages": ASK, "tools": [OPENAI_TOOL]})
    ).json()
    assert again["choices"][0]["message"]["tool_calls"] == [call]  # deterministic
    follow = [
        *ASK,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "-3C"},
    ]
    r = (
        await emu.post(
            "/v1/chat/completions", json={"model": GPT, "messages": follow, "tools": [OPENAI_TOOL]}
        )
    ).json()
    assert r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["message"]["content"]
    r = await emu.post(
        "/v1/chat/completions",
        json={"model": GPT, "messages": ASK, "tools": [OPENAI_TOOL], "tool_choice": "none"},
    )
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    orphan = [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "?"}]
    r = await emu.post("/v1/chat/completions", json={"model": GPT, "messages": orphan})
    assert r.status_code == 400 and "tool_calls" in r.json()["error"]["message"]


async def test_openai_n_choices_and_json_answers(emu) -> None:
    one = (await emu.post("/v1/chat/completions", json={"model": GPT, "messages": ASK})).json()
    r = (await emu.post("/v1/chat/completions", json={"model": GPT, "messages": ASK, "n": 3})).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert r["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
    chunks = await _sse(emu, "/v1/chat/completions", {"model": GPT, "messages": ASK, "n": 2})
    texts: dict[int, str] = {}
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + (ch["delta"].get("content") or "")
    assert texts == {0: one["choices"][0]["message"]["content"], 1: one["choices"][0]["message"]["content"]}
    r = (
        await emu.post(
            "/v1/chat/completions",
            json={"model": GPT, "messages": ASK, "response_format": {"type": "json_object"}},
        )
    ).json()
    assert json.loads(r["choices"][0]["message"]["content"]) == {
        "answer": one["choices"][0]["message"]["content"]
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": PARAMS}}
    r = (
        await emu.post("/v1/chat/completions", json={"model": GPT, "messages": ASK, "response_format": fmt})
    ).json()
    assert set(json.loads(r["choices"][0]["message"]["content"])) == set(PARAMS["properties"])
    r = await emu.post("/v1/chat/completions", json={"model": GPT, "messages": ASK, "n": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


async def test_openai_streamed_tool_call(emu) -> None:
    chunks = await _sse(
        emu,
        "/v1/chat/completions",
        {"model": GPT, "messages": ASK, "tools": [OPENAI_TOOL], "tool_choice": "required"},
    )
    calls = [
        ch["delta"]["tool_calls"][0] for c in chunks for ch in c["choices"] if ch["delta"].get("tool_calls")
    ]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls))["city"] == "Weather in Oslo?"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_anthropic_tool_use_both_ways(emu) -> None:
    body = {"model": CLAUDE, "max_tokens": 200, "messages": ASK, "tools": [ANTHROPIC_TOOL]}
    msg = (await emu.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    [use] = msg["content"]
    assert (
        msg["stop_reason"] == "tool_use"
        and use["type"] == "tool_use"
        and use["input"]["city"] == "Weather in Oslo?"
    )
    events = await _sse(emu, "/v1/messages", body, ANTHROPIC_HEADERS)
    assert events[1]["content_block"] == {**use, "input": {}}
    partial = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
    assert json.loads(partial) == use["input"] and events[-2]["delta"]["stop_reason"] == "tool_use"
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "-3C"}],
    }
    done = {**body, "messages": [*ASK, {"role": "assistant", "content": [use]}, result]}
    msg = (await emu.post("/v1/messages", json=done, headers=ANTHROPIC_HEADERS)).json()
    assert msg["stop_reason"] == "end_turn" and msg["content"][0]["type"] == "text"
    forced = {**done, "tool_choice": {"type": "tool", "name": "get_weather"}}
    msg = (await emu.post("/v1/messages", json=forced, headers=ANTHROPIC_HEADERS)).json()
    assert msg["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"n": 2}, "n: Extra inputs are not permitted"),
        ({"response_format": {"type": "json_object"}}, "response_format: Extra inputs"),
        ({"metadata": {"team": "a"}}, "only user_id"),
        ({"tool_choice": {"type": "any"}, "tools": None}, "tool_choice"),
        ({"tools": [{"name": "x", "input_schema": {"type": "string"}}]}, "input_schema.type"),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}],
                    },
                    {"role": "user", "content": "hi"},
                ]
            },
            "without `tool_result`",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t9", "content": "?"},
                            {"type": "text", "text": "hi"},
                        ],
                    }
                ]
            },
            "unexpected `tool_use_id`",
        ),
    ],
)
async def test_the_messages_api_refuses_what_it_would_refuse(emu, change: dict, says: str) -> None:
    body = {
        k: v
        for k, v in {"model": CLAUDE, "max_tokens": 50, "messages": ASK, **change}.items()
        if v is not None
    }
    r = await emu.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 400 and says in r.json()["error"]["message"]

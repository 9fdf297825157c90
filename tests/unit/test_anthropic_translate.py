"""OpenAI chat ⇄ Anthropic Messages translation: tools and tool calls both ways (streaming
included), JSON answers through a forced tool, and every parameter Anthropic cannot honour
reported by name instead of dropped."""

from __future__ import annotations

import json

import httpx
import pytest

from services.catalog import load_catalog
from services.errors import UnsupportedParameter
from services.providers.anthropic import AnthropicAdapter
from services.providers.anthropic_translate import (
    JSON_TOOL,
    StreamTranslator,
    to_chat_completion,
    to_messages_request,
    unsupported,
)
from services.providers.base import StreamUsage
from services.providers.compat import incapable_models

CATALOG = load_catalog()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "now"}}
ASK = [{"role": "user", "content": "Weather in Paris and the time?"}]


def test_tools_and_tool_choice_are_translated() -> None:
    body = to_messages_request({"messages": ASK, "tools": [WEATHER, CLOCK]}, "claude-v2")
    assert body["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],
            "description": "Weather of a city",
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "auto"}
    cases = {
        "none": {"type": "none"},
        "auto": {"type": "auto"},
        "required": {"type": "any"},
        json.dumps({"type": "function", "function": {"name": "now"}}): {"type": "tool", "name": "now"},
    }
    for choice, expected in cases.items():
        tc = choice if choice in ("none", "auto", "required") else json.loads(choice)
        got = to_messages_request({"messages": ASK, "tools": [WEATHER, CLOCK], "tool_choice": tc}, "c")
        assert got["tool_choice"] == expected
    serial = to_messages_request(
        {"messages": ASK, "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}, "c"
    )
    assert serial["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_a_tool_conversation_becomes_tool_use_and_tool_result_blocks() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
    ]
    payload = {
        "messages": [
            {"role": "system", "content": "be brief"},
            *ASK,
            {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [WEATHER, CLOCK],
        "user": "end-user-7",
    }
    assert unsupported(payload) == []
    body = to_messages_request(payload, "claude-v2")
    assert body["system"] == "be brief" and body["metadata"] == {"user_id": "end-user-7"}
    assert body["messages"] == [
        ASK[0],
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
            ],
        },
        {
            "role": "user",  # both results in one turn, the user's next words after them
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "12:00"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


def test_images_are_translated() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    body = to_messages_request({"messages": [{"role": "user", "content": parts}]}, "c")
    assert body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_response_format_is_a_forced_tool_and_its_input_the_json_answer() -> None:
    body = to_messages_request({"messages": ASK, "response_format": {"type": "json_object"}}, "c")
    assert body["tools"][0]["name"] == JSON_TOOL and body["tools"][0]["input_schema"] == {"type": "object"}
    assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    schema = {"type": "object", "properties": {"temp": {"type": "number"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": schema}}
    body = to_messages_request({"messages": ASK, "response_format": fmt, "reasoning_effort": "high"}, "c")
    assert body["tools"][0]["input_schema"] == schema and body["tool_choice"]["name"] == "forecast"
    assert "thinking" not in body  # Anthropic forces no tool while thinking
    msg = {
        "id": "m1",
        "content": [{"type": "tool_use", "id": "t1", "name": "forecast", "input": {"temp": 18}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 4},
    }
    choice = to_chat_completion(msg, "claude-v2", "forecast")["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"temp": 18} and "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


def test_tool_use_answers_become_tool_calls_with_json_string_arguments() -> None:
    msg = {
        "id": "m1",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 9, "output_tokens": 7},
    }
    body = to_chat_completion(msg, "claude-v2")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Checking."
    calls = choice["message"]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("toolu_1", "function", "get_weather"),
        ("toolu_2", "function", "now"),
    ]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {}]
    only_call = {**msg, "content": msg["content"][1:2]}
    assert to_chat_completion(only_call, "c")["choices"][0]["message"]["content"] is None


def _events() -> list[dict]:
    return [
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 11}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"ci'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'ty":"Paris"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 20}},
        {"type": "message_stop"},
    ]


def test_stream_events_become_tool_call_deltas() -> None:
    usage = StreamUsage()
    t = StreamTranslator("claude-v2", usage)
    chunks = [c for ev in _events() for c in t.feed(ev)]
    assert t.stopped and {c["id"] for c in chunks} == {"msg_1"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[1] == {"content": "Checking."}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    args: dict[int, str] = {}
    for c in calls:
        args[c["index"]] = args.get(c["index"], "") + c["function"]["arguments"]
    assert args == {0: '{"city":"Paris"}', 1: "{}"} and calls[-2]["id"] == "toolu_2"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 20)


def test_a_streamed_json_answer_is_content() -> None:
    t = StreamTranslator("claude-v2", StreamUsage(), JSON_TOOL)
    events = [
        {"type": "message_start", "message": {"id": "msg_2", "usage": {}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "1}"},
        },
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]
    chunks = [c for ev in events for c in t.feed(ev)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert json.loads(text) == {"a": 1} and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"seed": 7}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1.0}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"metadata": {"team": "a"}}, "metadata"),
        ({"store": True}, "store"),
        ({"temperature": 1.5}, "temperature"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True}}},
            "response_format",
        ),
        ({"response_format": {"type": "json_object"}, "tools": [WEATHER]}, "response_format"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools"),
        ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages",
        ),
    ],
)
def test_what_anthropic_cannot_honour_is_named(extra: dict, param: str) -> None:
    payload = {"messages": ASK, **extra}
    assert [u.param for u in unsupported(payload)] == [param]
    assert set(incapable_models(CATALOG, payload)) == {
        m.id for m in CATALOG.models if CATALOG.provider(m.provider).kind == "anthropic"
    }


def test_no_effect_values_are_not_a_problem() -> None:
    neutral = {
        "n": 1,
        "logprobs": False,
        "top_logprobs": 0,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "store": False,
        "metadata": {},
        "response_format": {"type": "text"},
        "temperature": 1.0,
        "top_k": 5,
    }
    assert unsupported({"messages": ASK, **neutral}) == []
    assert incapable_models(CATALOG, {"messages": ASK, **neutral}) == {}


async def test_the_adapter_refuses_before_calling_the_upstream() -> None:
    calls: list[httpx.Request] = []
    adapter = AnthropicAdapter(
        CATALOG.provider("emulator-anthropic"),
        transport=httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(500)),
    )
    with pytest.raises(UnsupportedParameter) as err:
        await adapter.complete({"messages": ASK, "n": 3}, "claude-v2")
    assert err.value.param == "n" and err.value.status == 400 and "one choice" in err.value.message
    assert calls == []
    await adapter.aclose()

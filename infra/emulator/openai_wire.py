"""The OpenAI chat-completions wire protocol: request parsing, the response body, the SSE chunk
stream and the error body. What to answer is decided in :mod:`.core`."""

from __future__ import annotations

import json
import time
import uuid

from .asgi import HTTPError, dumps
from .core import OPENAI_ERROR_TYPES, ChatRequest, ModelInfo, Reply, Turn, text_of
from .corpus import split_words
from .faults import FaultDecision
from .structured import ToolSpec, pieces


def _bad(message: str, param: str) -> HTTPError:
    return HTTPError(400, message, "invalid_request_error", None, param)


def _tools(req: dict) -> tuple[tuple[ToolSpec, ...], str, str | None]:
    """(tools, tool_choice mode, forced tool name), validated as OpenAI does."""
    raw = req.get("tools")
    if raw is None:
        if req.get("tool_choice") not in (None, "none"):
            raise _bad("'tool_choice' is only allowed when 'tools' are specified", "tool_choice")
        return (), "none", None
    if not isinstance(raw, list):
        raise _bad("'tools' must be an array", "tools")
    tools = []
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise _bad(f"tools[{i}] must be a function tool", f"tools[{i}]")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}].function.name is required", f"tools[{i}].function.name")
        params = fn.get("parameters")
        tools.append(
            ToolSpec(fn["name"], params if isinstance(params, dict) else {"type": "object", "properties": {}})
        )
    choice = req.get("tool_choice") or "auto"
    if choice in ("auto", "none", "required"):
        return tuple(tools), choice, None
    name = ((choice or {}).get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str) or name not in {t.name for t in tools}:
        raise _bad(f"tool_choice names no tool of the request: {choice!r}", "tool_choice")
    return tuple(tools), "required", name


def _schema(req: dict) -> dict | None:
    """The JSON schema a ``response_format`` asks for (``None``: free text)."""
    fmt = req.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        schema = fmt["json_schema"].get("schema")
        return schema if isinstance(schema, dict) else {"type": "object"}
    raise _bad("response_format must be text, json_object or json_schema", "response_format")


def _check_tool_results(messages: list) -> None:
    """A ``tool`` message must answer a call of the assistant message before it (as OpenAI says)."""
    open_calls: set[str] = set()
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            if m.get("tool_call_id") not in open_calls:
                raise _bad(
                    "messages with role 'tool' must be a response to a preceding message with "
                    f"'tool_calls' (messages[{i}].tool_call_id {m.get('tool_call_id')!r})",
                    f"messages[{i}]",
                )
        else:
            open_calls = {c.get("id") for c in m.get("tool_calls") or [] if isinstance(c, dict)}


class OpenAIWire:
    """``POST /v1/chat/completions``, non-streaming and SSE streaming."""

    def __init__(self, chunk_words: int = 4) -> None:
        self.chunk_words = chunk_words

    def parse(self, req: dict, model: ModelInfo) -> ChatRequest:
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPError(
                400, "'messages' must be a non-empty array", "invalid_request_error", None, "messages"
            )
        texts, question = [], None
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise HTTPError(
                    400,
                    f"messages[{i}] must be an object with a 'role'",
                    "invalid_request_error",
                    None,
                    f"messages[{i}]",
                )
            t = text_of(m.get("content"))
            texts.append(t)
            if m["role"] == "user":
                question = t
        if question is None:
            raise HTTPError(
                400, "'messages' needs at least one user message", "invalid_request_error", None, "messages"
            )
        _check_tool_results(messages)
        n = req.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            raise _bad("'n' must be an integer from 1 to 128", "n")
        tools, choice, forced = _tools(req)
        opts = req.get("stream_options")
        return ChatRequest(
            model=model,
            texts=texts,
            question=question,
            max_tokens=req.get("max_completion_tokens", req.get("max_tokens")),
            stream=req.get("stream") is True,
            include_usage=isinstance(opts, dict) and opts.get("include_usage") is True,
            n=n,
            tools=tools,
            tool_choice=choice,
            forced_tool=forced,
            after_tool_result=messages[-1]["role"] == "tool",
            json_schema=_schema(req),
        )

    def fault(self, decision: FaultDecision) -> FaultDecision:
        return decision

    def render(self, turn: Turn, chat: ChatRequest) -> Reply:
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        headers = [(b"x-request-id", rid.encode()), *turn.side_headers()]
        usage = {
            "prompt_tokens": turn.prompt_toks,
            "completion_tokens": turn.billed_completion,
            "total_tokens": turn.prompt_toks + turn.billed_completion,
            "prompt_tokens_details": {"cached_tokens": turn.cache.read, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        created = int(time.time())
        model = turn.model.id
        call = turn.call
        if not chat.stream:
            message: dict = {
                "role": "assistant",
                "content": None if call else turn.text,
                "refusal": None,
                "annotations": [],
            }
            if call:
                message["tool_calls"] = [
                    {
                        "id": "call_" + call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ]
            body = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": i, "message": message, "logprobs": None, "finish_reason": turn.finish}
                    for i in range(turn.choices)
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": None,
            }
            return Reply(headers, body=dumps(body))
        usage_tail = ',"usage":null}' if chat.include_usage else "}"
        head = (
            f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
            f'"model":{json.dumps(model)},"service_tier":"default","system_fingerprint":null,"choices":['
        )

        def chunk(delta: dict, finish: str | None = None, index: int = 0) -> bytes:
            fin = "null" if finish is None else f'"{finish}"'
            return (
                f'{head}{{"index":{index},"delta":{json.dumps(delta, ensure_ascii=False)},"logprobs":null,'
                f'"finish_reason":{fin}}}]{usage_tail}\n\n'
            ).encode()

        words = split_words(turn.text)
        n = self.chunk_words
        events = []
        for c in range(turn.choices):
            events.append(
                chunk({"role": "assistant", "content": None if call else "", "refusal": None}, index=c)
            )
            if call:
                head_call = {"index": 0, "id": "call_" + call.id, "type": "function"}
                events.append(
                    chunk(
                        {"tool_calls": [{**head_call, "function": {"name": call.name, "arguments": ""}}]},
                        index=c,
                    )
                )
                events += [
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}, index=c)
                    for p in pieces(call.arguments)
                ]
            else:
                events += [
                    chunk({"content": "".join(words[i : i + n])}, index=c) for i in range(0, len(words), n)
                ]
            events.append(chunk({}, turn.finish, index=c))
        if chat.include_usage:
            events.append((f'{head}],"usage":{dumps(usage).decode()}}}\n\n').encode())
        events.append(b"data: [DONE]\n\n")
        broken = b'data: {"id":"' + rid.encode() + b'","object":"chat.comp\n\n'
        return Reply(headers, events=events, broken_event=broken)

    def error_body(self, err: HTTPError) -> dict:
        etype = err.etype or OPENAI_ERROR_TYPES.get(err.status, "server_error")
        return {"error": {"message": err.message, "type": etype, "param": err.param, "code": err.code}}

"""The Anthropic Messages wire protocol: request parsing, the response body, the SSE event
stream (``message_start`` … ``message_stop``) and the error body. What to answer is decided in
:mod:`.core`."""

from __future__ import annotations

import json
import uuid

from .asgi import HTTPError, dumps
from .core import ChatRequest, ModelInfo, Reply, Turn, text_of
from .corpus import split_words
from .faults import FaultDecision
from .structured import ToolSpec, pieces

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


# the Messages API's top-level fields; any other is refused, as the real API refuses it
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
    }
)


def _bad(message: str) -> HTTPError:
    return HTTPError(400, message, "invalid_request_error")


def _blocks(content: object, kind: str) -> list[dict]:
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _marked(content: object) -> bool:
    """Whether a system prompt or message content carries a ``cache_control`` block (the end of
    a prefix to cache, see :mod:`.prompt_cache`)."""
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("cache_control") for b in content)


def _tools(req: dict) -> tuple[tuple[ToolSpec, ...], str, str | None]:
    """(tools, tool_choice mode, forced tool name), validated as the Messages API does."""
    raw, choice = req.get("tools"), req.get("tool_choice")
    if raw is None:
        if choice is not None:
            raise _bad("tool_choice: may only be specified while providing tools")
        return (), "none", None
    if not isinstance(raw, list):
        raise _bad("tools: Input should be a valid list")
    tools = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise _bad(f"tools.{i}.name: Field required")
        schema = t.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _bad(f"tools.{i}.input_schema.type: Input should be 'object'")
        extra = sorted(set(t) - {"name", "description", "input_schema", "type", "cache_control"})
        if extra:
            raise _bad(f"tools.{i}.{extra[0]}: Extra inputs are not permitted")
        tools.append(ToolSpec(t["name"], schema))
    kind = (choice or {"type": "auto"}).get("type") if isinstance(choice, dict) or choice is None else None
    if kind in ("auto", "none"):
        return tuple(tools), kind, None
    if kind == "any":
        return tuple(tools), "required", None
    if kind == "tool" and choice.get("name") in {t.name for t in tools}:
        return tuple(tools), "required", choice["name"]
    raise _bad(f"tool_choice: must be auto, any, none or a tool of the request, got {choice!r}")


def _check_tool_pairs(messages: list[dict]) -> None:
    """Every ``tool_use`` is answered by a ``tool_result`` in the next (user) message, and every
    ``tool_result`` answers a ``tool_use`` of the message before (as the Messages API checks)."""
    for i, m in enumerate(messages):
        asked = (
            {b.get("id") for b in _blocks(m.get("content"), "tool_use")}
            if m["role"] == "assistant"
            else set()
        )
        if asked:
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            given = {b.get("tool_use_id") for b in _blocks((nxt or {}).get("content"), "tool_result")}
            if nxt is not None and asked - given:
                raise _bad(
                    f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(sorted(map(str, asked - given)))}"
                )
        for j, b in enumerate(_blocks(m.get("content"), "tool_result")):
            prev = messages[i - 1] if i > 0 else {}
            ids = {x.get("id") for x in _blocks(prev.get("content"), "tool_use")}
            if m["role"] != "user" or b.get("tool_use_id") not in ids:
                raise _bad(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{b.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` "
                    "block in the previous message."
                )


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class AnthropicWire:
    """``POST /v1/messages``, non-streaming and SSE streaming."""

    def __init__(self, chunk_words: int = 4) -> None:
        self.chunk_words = chunk_words

    def parse(self, req: dict, model: ModelInfo) -> ChatRequest:
        extra = sorted(set(req) - _FIELDS)
        if extra:
            raise _bad(f"{extra[0]}: Extra inputs are not permitted")
        metadata = req.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
            raise _bad("metadata: only user_id is permitted")
        max_tokens = req.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise HTTPError(400, "max_tokens: field required (a positive integer)", "invalid_request_error")
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPError(400, "messages: at least one message is required", "invalid_request_error")
        system = req.get("system")
        if system is not None and not isinstance(system, str | list):
            raise HTTPError(400, "system: must be a string or a list of text blocks", "invalid_request_error")
        texts = [text_of(system)] if system else []
        breaks = [0] if system and _marked(system) else []
        question = None
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise HTTPError(
                    400, f"messages.{i}.role: must be 'user' or 'assistant'", "invalid_request_error"
                )
            content = m.get("content")
            if not isinstance(content, str | list):
                raise HTTPError(
                    400,
                    f"messages.{i}.content: must be a string or a list of blocks",
                    "invalid_request_error",
                )
            t = text_of(content)
            if _marked(content):
                breaks.append(len(texts))
            texts.append(t)
            if m["role"] == "user" and (t or not _blocks(content, "tool_result")):
                question = t  # a turn that only hands back tool results asks nothing new
        if question is None or messages[0].get("role") != "user":
            raise HTTPError(
                400, "messages: the first message must use the 'user' role", "invalid_request_error"
            )
        _check_tool_pairs(messages)
        tools, choice, forced = _tools(req)
        last = messages[-1]
        return ChatRequest(
            model,
            texts,
            question,
            max_tokens,
            stream=req.get("stream") is True,
            tools=tools,
            tool_choice=choice,
            forced_tool=forced,
            after_tool_result=last["role"] == "user" and bool(_blocks(last["content"], "tool_result")),
            cache_breaks=tuple(breaks),
        )

    def fault(self, decision: FaultDecision) -> FaultDecision:
        """Anthropic says "overloaded" (529) where an OpenAI upstream says 503."""
        if decision.kind == "error" and decision.status == 503:
            return FaultDecision("error", 529)
        return decision

    def render(self, turn: Turn, chat: ChatRequest) -> Reply:
        mid = "msg_" + uuid.uuid4().hex[:24]
        headers = [(b"request-id", ("req_" + mid[4:]).encode()), *turn.side_headers()]
        stop = {"length": "max_tokens", "tool_calls": "tool_use"}.get(turn.finish, "end_turn")
        call = turn.call
        usage = {  # input_tokens leaves out the cached prompt tokens, as Anthropic counts
            "input_tokens": turn.prompt_toks - turn.cache.read - turn.cache.written,
            "output_tokens": turn.completion_toks,
            "cache_creation_input_tokens": turn.cache.written,
            "cache_read_input_tokens": turn.cache.read,
        }
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": turn.model.id,
        }
        if not chat.stream:
            content = (
                [{"type": "tool_use", "id": "toolu_" + call.id, "name": call.name, "input": call.input}]
                if call
                else [{"type": "text", "text": turn.text}]
            )
            body = {
                **message,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            return Reply(headers, body=dumps(body))
        words = split_words(turn.text)
        n = self.chunk_words
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        if call:
            block = {"type": "tool_use", "id": "toolu_" + call.id, "name": call.name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(call.arguments)]
        else:
            block = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": "".join(words[i : i + n])} for i in range(0, len(words), n)
            ]
        events = [
            _event("message_start", {"type": "message_start", "message": start}),
            _event(
                "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
            ),
        ]
        events += [
            _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
            for d in deltas
        ]
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": turn.completion_toks},
                },
            )
        )
        events.append(_event("message_stop", {"type": "message_stop"}))
        broken = b'event: content_block_delta\ndata: {"type": "conte\n\n'
        return Reply(headers, events=events, broken_event=broken)

    def error_body(self, err: HTTPError) -> dict:
        etype = _ERROR_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": etype, "message": err.message}}

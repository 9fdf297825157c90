"""OpenAI chat ⇄ Anthropic Messages, as pure functions: the request body, the answer, the stream
events, and which OpenAI parameters an Anthropic model cannot honour (docs/api.md, "OpenAI
compatibility"). Nothing is dropped silently: a parameter is translated, or it is reported by
:func:`unsupported` (a 400 naming it, or a candidate left out of ``switchyard/auto``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .base import StreamUsage, Unsupported, has_cache_control

DEFAULT_MAX_TOKENS = 1024
THINKING_BUDGET_TOKENS = 1024
JSON_TOOL = "json_response"  # the forced tool that carries a response_format answer
_NO_PARAMETERS = {"type": "object", "properties": {}}  # a tool without parameters
_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}

# OpenAI parameters with no Anthropic equivalent, harmless only at their no-effect value
_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v == 1, "Anthropic answers one choice per request"),
    "logprobs": (lambda v: v is False, "Anthropic returns no token log probabilities"),
    "top_logprobs": (lambda v: v == 0, "Anthropic returns no token log probabilities"),
    "presence_penalty": (lambda v: v == 0, "Anthropic has no presence penalty"),
    "frequency_penalty": (lambda v: v == 0, "Anthropic has no frequency penalty"),
    "logit_bias": (lambda v: not v, "Anthropic has no logit bias"),
    "seed": (lambda v: False, "Anthropic has no seed, so the answer cannot be made reproducible"),
    "metadata": (
        lambda v: not v,
        "Anthropic keeps no stored completions to tag (its metadata takes only a user id, which "
        "`user` fills)",
    ),
    "store": (lambda v: v is False, "Anthropic keeps no stored completions"),
}
# translated into the Messages body (or, for Anthropic's own top_k, passed as is)
_TRANSLATED = frozenset(
    {
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "response_format",
        "reasoning_effort",
    }
)
_TRANSPORT = frozenset({"model", "stream", "stream_options"})  # set by the adapter itself
_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "refusal"})


def unsupported(payload: dict[str, Any]) -> list[Unsupported]:
    """Every parameter of an OpenAI chat body that an Anthropic model cannot honour (empty: the
    whole request translates)."""
    out: list[Unsupported] = []
    for key, value in payload.items():
        if value is None or key in _TRANSPORT:
            continue
        if key in _NEUTRAL:
            harmless, why = _NEUTRAL[key]
            if not harmless(value):
                out.append(Unsupported(key, why))
        elif key not in _TRANSLATED:
            out.append(Unsupported(key, "not translated to Anthropic Messages (no equivalent)"))
    temperature = payload.get("temperature")
    if isinstance(temperature, int | float) and temperature > 1:
        out.append(Unsupported("temperature", "above 1: Anthropic's range is 0 to 1"))
    tools = payload.get("tools") or []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            out.append(Unsupported("tools", f"tools of type {kind!r} (Anthropic takes function tools)"))
            break
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        out.append(Unsupported("tool_choice", f"a tool_choice of type {choice.get('type')!r}"))
    fmt = payload.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            out.append(Unsupported("response_format", f"a response_format of type {kind!r}"))
        elif kind != "text" and tools:
            out.append(
                Unsupported(
                    "response_format",
                    "JSON output together with tools (on Anthropic the JSON answer is itself a forced "
                    "tool call)",
                )
            )
        elif kind == "json_schema" and (fmt.get("json_schema") or {}).get("strict"):
            out.append(
                Unsupported(
                    "response_format",
                    "json_schema with strict: true (Anthropic follows the schema but does not guarantee it)",
                )
            )
    out.extend(_message_problems(payload.get("messages") or []))
    return out


def _message_problems(messages: list[Any]) -> list[Unsupported]:
    out: list[Unsupported] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        extra = sorted(k for k, v in m.items() if k not in _MESSAGE_KEYS and v is not None)
        if extra:
            out.append(
                Unsupported("messages", f"messages[{i}] has {', '.join(extra)}, which Anthropic lacks")
            )
        content = m.get("content")
        if isinstance(content, list):
            kinds = {p.get("type") for p in content if isinstance(p, dict)}
            allowed = {"text", "image_url"} if m.get("role") == "user" else {"text"}
            bad = sorted(str(k) for k in kinds - allowed)
            if bad:
                out.append(
                    Unsupported("messages", f"messages[{i}] has content parts of type {', '.join(bad)}")
                )
        for call in m.get("tool_calls") or []:
            args = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
            if not isinstance(_arguments(args), dict):
                out.append(
                    Unsupported(
                        "messages", f"messages[{i}] has tool call arguments that are not a JSON object"
                    )
                )
                break
    return out


def _arguments(raw: Any) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _image(part: dict[str, Any]) -> dict[str, Any]:
    url = str((part.get("image_url") or {}).get("url") or "")
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content as Anthropic content blocks (no empty text blocks). A part's
    ``cache_control`` (the convention OpenAI-compatible gateways use for Anthropic's prompt
    caching) stays on its block: the prefix up to it is cached."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for p in content or []:
        if p.get("type") == "text" and p.get("text"):
            blocks.append({"type": "text", "text": p["text"]})
        elif p.get("type") == "image_url":
            blocks.append(_image(p))
        else:
            continue
        if p.get("cache_control"):
            blocks[-1]["cache_control"] = p["cache_control"]
    return blocks


def _marked_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The system prompt as text blocks when a part of it carries ``cache_control`` (a plain
    string cannot carry it), else ``None``."""
    parts = [m.get("content") for m in messages if m.get("role") in ("system", "developer")]
    if not any(map(has_cache_control, parts)):
        return None
    return [b for c in parts for b in _blocks(c) if b["type"] == "text"]


def _messages(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Anthropic messages): tool results become ``tool_result`` blocks of one user
    turn, assistant tool calls ``tool_use`` blocks."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def holds_results(msg: dict[str, Any]) -> bool:
        c = msg["content"]
        return msg["role"] == "user" and isinstance(c, list) and any(b["type"] == "tool_result" for b in c)

    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_text(m.get("content")))
        elif role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id") or "",
                "content": _text(m.get("content")),
            }
            if out and holds_results(out[-1]):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif role == "assistant" and m.get("tool_calls"):
            blocks = _blocks(m.get("content"))
            for call in m["tool_calls"]:
                fn = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": fn.get("name", ""),
                        "input": _arguments(fn.get("arguments")),
                    }
                )
            out.append({"role": "assistant", "content": blocks})
        else:
            content = m.get("content")
            plain = isinstance(content, str) or content is None
            if role == "user" and out and holds_results(out[-1]):
                out[-1]["content"].extend(_blocks(content))  # text after tool results: the same turn
                continue
            out.append(
                {
                    "role": "assistant" if role == "assistant" else "user",
                    "content": (content or "") if plain else _blocks(content),
                }
            )
    return system, out


def json_tool_name(payload: dict[str, Any]) -> str | None:
    """The forced tool carrying a ``response_format`` JSON answer, when the request asks for one."""
    fmt = payload.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    name = (fmt.get("json_schema") or {}).get("name") if fmt["type"] == "json_schema" else None
    return str(name) if name else JSON_TOOL


def _tools(payload: dict[str, Any], json_tool: str | None) -> tuple[list[dict[str, Any]], dict | None]:
    """(Anthropic tools, tool_choice) for the request's tools or its JSON response_format."""
    if json_tool is not None:
        fmt = payload["response_format"]
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if fmt["type"] == "json_schema" else None
        tool = {
            "name": json_tool,
            "description": spec.get("description")
            or "Give your complete answer as the input of this tool: a JSON object.",
            "input_schema": schema or {"type": "object"},
        }
        return [tool], {"type": "tool", "name": json_tool}
    tools = []
    for t in payload.get("tools") or []:
        fn = t.get("function") or {}
        tool = {"name": fn.get("name", ""), "input_schema": fn.get("parameters") or _NO_PARAMETERS}
        if fn.get("description"):
            tool["description"] = fn["description"]
        tools.append(tool)
    if not tools:
        return [], None
    choice = payload.get("tool_choice")
    if choice == "none":
        return tools, {"type": "none"}
    if choice == "required":
        tc: dict[str, Any] = {"type": "any"}
    elif isinstance(choice, dict):
        tc = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    else:
        tc = {"type": "auto"}
    if payload.get("parallel_tool_calls") is False:
        tc["disable_parallel_tool_use"] = True
    return tools, tc


def to_messages_request(payload: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """An OpenAI chat body as an Anthropic Messages body. Call :func:`unsupported` first: what it
    reports is not in the body."""
    system, messages = _messages(payload.get("messages", []))
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "max_tokens": int(
            payload.get("max_completion_tokens") or payload.get("max_tokens") or DEFAULT_MAX_TOKENS
        ),
    }
    if system:
        body["system"] = _marked_system(payload.get("messages", [])) or "\n".join(system)
    for key in ("temperature", "top_p", "top_k"):
        if payload.get(key) is not None:
            body[key] = payload[key]
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    user = payload.get("safety_identifier") or payload.get("user")
    if user:
        body["metadata"] = {"user_id": user}
    tools, choice = _tools(payload, json_tool_name(payload))
    if tools:
        body["tools"] = tools
        body["tool_choice"] = choice
    forced = choice is not None and choice["type"] in ("any", "tool")
    if payload.get("reasoning_effort") and not forced:  # Anthropic forces no tool while thinking
        body["thinking"] = {"type": "enabled", "budget_tokens": THINKING_BUDGET_TOKENS}
    return body


def prompt_usage(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt tokens, cache reads, cache writes) of an Anthropic ``usage``. Anthropic's
    ``input_tokens`` leaves out what was read from or written to the prompt cache; the gateway
    counts as OpenAI does, so its prompt tokens are all three together (cached ones included)."""
    fresh = int(usage.get("input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return fresh + read + written, read, written


def openai_usage(prompt: int, completion: int, cached: int, written: int) -> dict[str, Any]:
    """An OpenAI ``usage`` object: ``prompt_tokens_details.cached_tokens`` as OpenAI reports it,
    and the cache writes (no OpenAI equivalent) beside it as ``cache_write_tokens`` when any."""
    details: dict[str, int] = {"cached_tokens": cached}
    if written:
        details["cache_write_tokens"] = written
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
    }


def _finish(stop_reason: str | None, json_answer: bool) -> str:
    if stop_reason == "tool_use" and json_answer:
        return "stop"
    return _STOP.get(stop_reason or "end_turn", "stop")


def to_chat_completion(msg: dict[str, Any], model: str, json_tool: str | None = None) -> dict[str, Any]:
    """An Anthropic Messages answer as an OpenAI ``chat.completion``: text blocks are the content,
    ``tool_use`` blocks the tool calls (or, for the ``json_tool``, the JSON content)."""
    usage = msg.get("usage") or {}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for b in msg.get("content") or []:
        if b.get("type") == "text":
            texts.append(b.get("text", ""))
        elif b.get("type") == "tool_use":
            arguments = json.dumps(b.get("input") or {}, ensure_ascii=False)
            if json_tool is not None and b.get("name") == json_tool:
                texts.append(arguments)
            else:
                calls.append(
                    {
                        "id": b.get("id", ""),
                        "type": "function",
                        "function": {"name": b.get("name", ""), "arguments": arguments},
                    }
                )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    (prompt, cached, written), completion = prompt_usage(usage), int(usage.get("output_tokens") or 0)
    return {
        "id": msg.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish(msg.get("stop_reason"), json_tool is not None and not calls),
            }
        ],
        "usage": openai_usage(prompt, completion, cached, written),
    }


class StreamTranslator:
    """Anthropic stream events → OpenAI ``chat.completion.chunk`` dicts: text deltas as content,
    each ``tool_use`` block as a tool call (its index among the tool calls, id and name first,
    then its ``input_json_delta`` pieces as arguments), the stop reason as the finish reason.
    Tokens and text go into ``usage``."""

    def __init__(self, model: str, usage: StreamUsage, json_tool: str | None = None) -> None:
        self.model = model
        self.usage = usage
        self.json_tool = json_tool
        self.id = ""
        self.created = int(time.time())
        self.stopped = False
        self._calls: dict[int, int] = {}  # content block index → tool call index
        self._json_blocks: set[int] = set()

    def _take_prompt_usage(self, usage: dict[str, Any]) -> None:
        u = self.usage
        u.prompt_tokens, u.cached_tokens, u.cache_write_tokens = prompt_usage(usage)

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event makes (often none)."""
        kind = ev.get("type")
        if kind == "message_start":
            m = ev.get("message") or {}
            self.id = m.get("id", "")
            self._take_prompt_usage(m.get("usage") or {})
            return [self.chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block, index = ev.get("content_block") or {}, ev.get("index", 0)
            if block.get("type") != "tool_use":
                return []
            if self.json_tool is not None and block.get("name") == self.json_tool:
                self._json_blocks.add(index)
                return []
            k = self._calls[index] = len(self._calls)
            self.usage.text.append(block.get("name", ""))
            call = {"index": k, "id": block.get("id", ""), "type": "function"}
            return [
                self.chunk(
                    {"tool_calls": [{**call, "function": {"name": block.get("name", ""), "arguments": ""}}]}
                )
            ]
        if kind == "content_block_delta":
            delta, index = ev.get("delta") or {}, ev.get("index", 0)
            piece = delta.get("text") if delta.get("type", "text_delta") == "text_delta" else None
            if delta.get("type") == "input_json_delta":
                piece = delta.get("partial_json")
            if not piece:
                return []
            self.usage.text.append(piece)
            if index in self._calls:
                return [
                    self.chunk(
                        {"tool_calls": [{"index": self._calls[index], "function": {"arguments": piece}}]}
                    )
                ]
            return [self.chunk({"content": piece})]  # text, or the JSON answer's tool input
        if kind == "message_delta":
            usage = ev.get("usage") or {}
            out = usage.get("output_tokens")
            if out:
                self.usage.completion_tokens = int(out)
            if usage.get("input_tokens") is not None:  # newer API versions repeat the final input counts
                self._take_prompt_usage(usage)
            stop = (ev.get("delta") or {}).get("stop_reason")
            if stop:
                return [self.chunk({}, _finish(stop, bool(self._json_blocks) and not self._calls))]
            return []
        if kind == "message_stop":
            self.stopped = True
        return []

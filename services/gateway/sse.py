"""Server-sent events of the chat API: one event, the usage chunk, and a finished completion
replayed as chunks (cascades read the whole answer before they accept it, then stream it).

Every chunk of one stream carries the same ``id`` and ``created``, the usage chunk included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    """One ``data:`` event."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage_chunk(
    chunk_id: str,
    created: int,
    model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int | None = None,
) -> dict[str, Any]:
    """The final chunk of ``stream_options.include_usage``: no choices, the tokens billed; with
    ``cached_tokens`` (part of ``prompt_tokens``) also ``prompt_tokens_details`` as OpenAI sends it."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def completion_chunks(body: dict[str, Any], chunk_id: str, created: int, model: str | None) -> Iterator[dict]:
    """A ``chat.completion`` as the chunks a stream of it would have sent: for every choice (by
    index) its role, its text (with its logprobs), its refusal, each tool call (index, id, type,
    name, arguments) and its finish reason."""
    base = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict:
        return {**base, "choices": [{"index": index, "delta": delta, **extra, "finish_reason": finish}]}

    choices = sorted(body.get("choices") or [{}], key=lambda c: c.get("index") or 0)
    for n, choice in enumerate(choices):
        index = choice.get("index", n)
        message = choice.get("message") or {}
        yield chunk(index, {"role": "assistant", "content": ""})
        if message.get("content"):
            logprobs = {"logprobs": choice["logprobs"]} if choice.get("logprobs") else {}
            yield chunk(index, {"content": message["content"]}, **logprobs)
        if message.get("refusal"):
            yield chunk(index, {"refusal": message["refusal"]})
        for k, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            delta_call = {
                "index": k,
                "id": call.get("id"),
                "type": call.get("type", "function"),
                "function": {"name": fn.get("name"), "arguments": fn.get("arguments", "")},
            }
            yield chunk(index, {"tool_calls": [delta_call]})
        yield chunk(index, {}, choice.get("finish_reason") or "stop")

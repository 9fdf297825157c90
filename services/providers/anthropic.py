"""The Anthropic Messages adapter (``POST {base_url}/v1/messages``), translated to OpenAI shape."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from services.errors import UpstreamError

from .base import Completion, StreamUsage, estimate_tokens, prompt_text
from .http import PooledAdapter, decode_event, mapped_errors, post_json, status_error, timed_sse_events

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def to_messages_request(payload: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """An OpenAI chat body as an Anthropic Messages body (system prompt pulled out)."""
    system = [
        _text(m.get("content"))
        for m in payload.get("messages", [])
        if m.get("role") in ("system", "developer")
    ]
    messages = [
        {"role": "assistant" if m.get("role") == "assistant" else "user", "content": _text(m.get("content"))}
        for m in payload.get("messages", [])
        if m.get("role") not in ("system", "developer")
    ]
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "max_tokens": int(
            payload.get("max_completion_tokens") or payload.get("max_tokens") or DEFAULT_MAX_TOKENS
        ),
    }
    if system:
        body["system"] = "\n".join(system)
    for key in ("temperature", "top_p"):
        if payload.get(key) is not None:
            body[key] = payload[key]
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("reasoning_effort"):
        body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    return body


def to_chat_completion(msg: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages answer as an OpenAI ``chat.completion``."""
    usage = msg.get("usage") or {}
    text = "".join(b.get("text", "") for b in msg.get("content") or [] if b.get("type") == "text")
    return {
        "id": msg.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": _STOP.get(msg.get("stop_reason") or "end_turn", "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": int(usage.get("input_tokens") or 0),
            "completion_tokens": int(usage.get("output_tokens") or 0),
            "total_tokens": int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0),
        },
    }


class AnthropicAdapter(PooledAdapter):
    """Messages API calls over one pooled client, answers translated to OpenAI shape."""

    def static_headers(self) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION}

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    async def complete(self, payload: dict[str, Any], upstream_model: str) -> Completion:
        """One non-streamed Messages call, answered as an OpenAI chat completion."""
        msg = await post_json(
            self._client,
            self.name,
            "/v1/messages",
            to_messages_request(payload, upstream_model),
            self.timeouts.total_s,
        )
        if msg.get("type") == "error":
            raise UpstreamError(f"upstream {self.name} error: {msg.get('error')}", upstream=self.name)
        body = to_chat_completion(msg, upstream_model)
        u = body["usage"]
        content = body["choices"][0]["message"]["content"]
        return Completion(
            body=body,
            prompt_tokens=u["prompt_tokens"] or estimate_tokens(prompt_text(payload.get("messages", []))),
            completion_tokens=u["completion_tokens"] or estimate_tokens(content),
        )

    async def stream(
        self, payload: dict[str, Any], upstream_model: str, usage: StreamUsage
    ) -> AsyncIterator[dict[str, Any]]:
        """Messages stream events as OpenAI chunks; a stream without ``message_stop`` fails."""
        body = {**to_messages_request(payload, upstream_model), "stream": True}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s
        msg_id, created = "", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": msg_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": upstream_model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        async with mapped_errors(self.name):
            async with self._client.stream("POST", "/v1/messages", json=body) as resp:
                if resp.status_code >= 400:
                    raise status_error(self.name, resp.status_code, await resp.aread(), resp.headers)
                stopped = False
                async for data in timed_sse_events(resp, self.name, deadline):
                    ev = decode_event(self.name, data)
                    kind = ev.get("type")
                    if kind == "error":
                        raise UpstreamError(
                            f"upstream {self.name} stream error: {ev.get('error')}", upstream=self.name
                        )
                    if kind == "message_start":
                        m = ev.get("message") or {}
                        msg_id = m.get("id", "")
                        usage.prompt_tokens = int((m.get("usage") or {}).get("input_tokens") or 0)
                        yield chunk({"role": "assistant", "content": ""})
                    elif kind == "content_block_delta":
                        text = (ev.get("delta") or {}).get("text")
                        if text:
                            usage.text.append(text)
                            yield chunk({"content": text})
                    elif kind == "message_delta":
                        out = (ev.get("usage") or {}).get("output_tokens")
                        if out:
                            usage.completion_tokens = int(out)
                        stop = (ev.get("delta") or {}).get("stop_reason")
                        if stop:
                            yield chunk({}, _STOP.get(stop, "stop"))
                    elif kind == "message_stop":
                        stopped = True
                        break
                if not stopped:
                    raise UpstreamError(
                        f"upstream {self.name} stream ended before message_stop", upstream=self.name
                    )
        usage.fill_estimates(payload.get("messages", []))

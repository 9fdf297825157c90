"""The Anthropic Messages adapter (``POST {base_url}/v1/messages``), translated to OpenAI shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from services.errors import UnsupportedParameter, UpstreamError

from .anthropic_translate import (
    StreamTranslator,
    json_tool_name,
    to_chat_completion,
    to_messages_request,
    unsupported,
)
from .base import Completion, StreamUsage, estimate_tokens, prompt_text
from .http import PooledAdapter, decode_event, mapped_errors, post_json, status_error, timed_sse_events

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"


def checked_request(payload: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The Messages body of an OpenAI chat body; a parameter it cannot honour is a 400 naming it
    (the gateway leaves such models out before it gets here; this is the last guard)."""
    problems = unsupported(payload)
    if problems:
        first = problems[0]
        raise UnsupportedParameter(
            f"{upstream_model} (an Anthropic model) cannot honour {first.param}: {first.reason}",
            param=first.param,
        )
    return to_messages_request(payload, upstream_model)


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
            checked_request(payload, upstream_model),
            self.timeouts.total_s,
        )
        if msg.get("type") == "error":
            raise UpstreamError(f"upstream {self.name} error: {msg.get('error')}", upstream=self.name)
        result = Completion(to_chat_completion(msg, upstream_model, json_tool_name(payload)), 0, 0)
        u = result.body["usage"]
        result.prompt_tokens = u["prompt_tokens"] or estimate_tokens(prompt_text(payload.get("messages", [])))
        result.completion_tokens = u["completion_tokens"] or estimate_tokens(result.answer_text)
        result.cached_tokens = u["prompt_tokens_details"]["cached_tokens"]
        result.cache_write_tokens = u["prompt_tokens_details"].get("cache_write_tokens", 0)
        return result

    async def stream(
        self, payload: dict[str, Any], upstream_model: str, usage: StreamUsage
    ) -> AsyncIterator[dict[str, Any]]:
        """Messages stream events as OpenAI chunks; a stream without ``message_stop`` fails."""
        body = {**checked_request(payload, upstream_model), "stream": True}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s
        translate = StreamTranslator(upstream_model, usage, json_tool_name(payload))
        async with mapped_errors(self.name):
            async with self._client.stream("POST", "/v1/messages", json=body) as resp:
                if resp.status_code >= 400:
                    raise status_error(self.name, resp.status_code, await resp.aread(), resp.headers)
                async for data in timed_sse_events(resp, self.name, deadline):
                    ev = decode_event(self.name, data)
                    if ev.get("type") == "error":
                        raise UpstreamError(
                            f"upstream {self.name} stream error: {ev.get('error')}", upstream=self.name
                        )
                    for chunk in translate.feed(ev):
                        yield chunk
                    if translate.stopped:
                        break
                if not translate.stopped:
                    raise UpstreamError(
                        f"upstream {self.name} stream ended before message_stop", upstream=self.name
                    )
        usage.fill_estimates(payload.get("messages", []))

"""The OpenAI-compatible chat completions adapter (``POST {base_url}/chat/completions``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from services.errors import UpstreamError

from .base import Completion, StreamUsage, estimate_tokens, openai_cached_tokens, prompt_text
from .http import PooledAdapter, decode_event, mapped_errors, post_json, status_error, timed_sse_events

log = logging.getLogger(__name__)


class OpenAIAdapter(PooledAdapter):
    """Chat completions against an OpenAI-compatible upstream over one pooled client."""

    async def complete(self, payload: dict[str, Any], upstream_model: str) -> Completion:
        """One non-streamed completion, in OpenAI shape."""
        body = await post_json(
            self._client,
            self.name,
            "/chat/completions",
            {**payload, "model": upstream_model, "stream": False},
            self.timeouts.total_s,
        )
        if not isinstance(body.get("choices"), list) or not body["choices"]:
            raise UpstreamError(f"upstream {self.name} answered without choices", upstream=self.name)
        usage = body.get("usage") or {}
        result = Completion(body, 0, 0)
        result.prompt_tokens = int(
            usage.get("prompt_tokens") or estimate_tokens(prompt_text(payload.get("messages", [])))
        )
        result.completion_tokens = int(usage.get("completion_tokens") or estimate_tokens(result.answer_text))
        result.cached_tokens = min(openai_cached_tokens(usage), result.prompt_tokens)
        return result

    async def stream(
        self, payload: dict[str, Any], upstream_model: str, usage: StreamUsage
    ) -> AsyncIterator[dict[str, Any]]:
        """OpenAI ``chat.completion.chunk`` dicts; raises UpstreamError on a failure or a cut stream.

        The first chunk must come within the first-token timeout, the whole stream within the
        total timeout; a stream that ends without ``[DONE]`` is a failure, never a success.
        """
        body = {**payload, "model": upstream_model, "stream": True, "stream_options": {"include_usage": True}}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s
        async with mapped_errors(self.name):
            async with self._client.stream("POST", "/chat/completions", json=body) as resp:
                if resp.status_code >= 400:
                    raise status_error(self.name, resp.status_code, await resp.aread(), resp.headers)
                done = False
                async for data in timed_sse_events(resp, self.name, deadline):
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = decode_event(self.name, data, "chunk")
                    if "error" in chunk:
                        msg = (
                            (chunk["error"] or {}).get("message", "error")
                            if isinstance(chunk["error"], dict)
                            else chunk["error"]
                        )
                        raise UpstreamError(f"upstream {self.name} stream error: {msg}", upstream=self.name)
                    if chunk.get("usage"):
                        usage.prompt_tokens = int(chunk["usage"].get("prompt_tokens") or 0)
                        usage.completion_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                        usage.cached_tokens = openai_cached_tokens(chunk["usage"])
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            usage.text.append(delta["content"])
                        for call in delta.get("tool_calls") or []:  # arguments count as completion
                            usage.text.append((call.get("function") or {}).get("arguments") or "")
                    if chunk.get("choices"):
                        yield chunk
                if not done:
                    raise UpstreamError(
                        f"upstream {self.name} stream ended before [DONE]", upstream=self.name
                    )
        usage.fill_estimates(payload.get("messages", []))

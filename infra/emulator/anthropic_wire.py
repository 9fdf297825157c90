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

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class AnthropicWire:
    """``POST /v1/messages``, non-streaming and SSE streaming."""

    def __init__(self, chunk_words: int = 4) -> None:
        self.chunk_words = chunk_words

    def parse(self, req: dict, model: ModelInfo) -> ChatRequest:
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
            texts.append(t)
            if m["role"] == "user":
                question = t
        if question is None or messages[0].get("role") != "user":
            raise HTTPError(
                400, "messages: the first message must use the 'user' role", "invalid_request_error"
            )
        return ChatRequest(model, texts, question, max_tokens, stream=req.get("stream") is True)

    def fault(self, decision: FaultDecision) -> FaultDecision:
        """Anthropic says "overloaded" (529) where an OpenAI upstream says 503."""
        if decision.kind == "error" and decision.status == 503:
            return FaultDecision("error", 529)
        return decision

    def render(self, turn: Turn, chat: ChatRequest) -> Reply:
        mid = "msg_" + uuid.uuid4().hex[:24]
        headers = [(b"request-id", ("req_" + mid[4:]).encode()), *turn.side_headers()]
        stop = "max_tokens" if turn.finish == "length" else "end_turn"
        usage = {
            "input_tokens": turn.prompt_toks,
            "output_tokens": turn.completion_toks,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": turn.model.id,
        }
        if not chat.stream:
            body = {
                **message,
                "content": [{"type": "text", "text": turn.text}],
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            return Reply(headers, body=dumps(body))
        pieces = split_words(turn.text)
        n = self.chunk_words
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        events = [
            _event("message_start", {"type": "message_start", "message": start}),
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
        ]
        events += [
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "".join(pieces[i : i + n])},
                },
            )
            for i in range(0, len(pieces), n)
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

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
        opts = req.get("stream_options")
        return ChatRequest(
            model=model,
            texts=texts,
            question=question,
            max_tokens=req.get("max_completion_tokens", req.get("max_tokens")),
            stream=req.get("stream") is True,
            include_usage=isinstance(opts, dict) and opts.get("include_usage") is True,
        )

    def fault(self, decision: FaultDecision) -> FaultDecision:
        return decision

    def render(self, turn: Turn, chat: ChatRequest) -> Reply:
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        headers = [(b"x-request-id", rid.encode()), *turn.side_headers()]
        usage = {
            "prompt_tokens": turn.prompt_toks,
            "completion_tokens": turn.completion_toks,
            "total_tokens": turn.prompt_toks + turn.completion_toks,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        created = int(time.time())
        model = turn.model.id
        if not chat.stream:
            body = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": turn.text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": turn.finish,
                    }
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

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            fin = "null" if finish is None else f'"{finish}"'
            return (
                f'{head}{{"index":0,"delta":{json.dumps(delta, ensure_ascii=False)},"logprobs":null,'
                f'"finish_reason":{fin}}}]{usage_tail}\n\n'
            ).encode()

        pieces = split_words(turn.text)
        n = self.chunk_words
        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": "".join(pieces[i : i + n])}) for i in range(0, len(pieces), n)]
        events.append(chunk({}, turn.finish))
        if chat.include_usage:
            events.append((f'{head}],"usage":{dumps(usage).decode()}}}\n\n').encode())
        events.append(b"data: [DONE]\n\n")
        broken = b'data: {"id":"' + rid.encode() + b'","object":"chat.comp\n\n'
        return Reply(headers, events=events, broken_event=broken)

    def error_body(self, err: HTTPError) -> dict:
        etype = err.etype or OPENAI_ERROR_TYPES.get(err.status, "server_error")
        return {"error": {"message": err.message, "type": etype, "param": err.param, "code": err.code}}

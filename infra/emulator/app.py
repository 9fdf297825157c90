"""The emulator's HTTP app: a lean ASGI callable (no framework on the hot path) for uvicorn.

Endpoints (OpenAI/Anthropic shapes; side channels under ``/emulator``)::

    POST /v1/chat/completions     OpenAI chat completions, non-streaming and SSE streaming
    POST /v1/messages             Anthropic Messages, non-streaming and SSE streaming
    GET  /v1/models               the catalog models and the judge
    POST /v1/feedback             a sink for quality signals (so the replayer can run without a gateway)
    GET  /healthz, /readyz
    GET  /emulator/truth?prompt_hash=H&model=M   ground truth for (prompt, model), drift included
    POST /emulator/truth          same, body {"prompt" | "prompt_hash", "model"?}
    GET|POST|DELETE /emulator/faults   faults per model: POST {"model": M | "*", ...FaultSpec}
    GET|POST|DELETE /emulator/drift    drift rules: POST DriftRule
    POST /emulator/latency        {"speed": float}
    POST /emulator/reset          back to the start config; counters cleared
    GET  /emulator/stats          requests per model, injected faults, feedback count
    GET  /emulator/feedback       the feedback received

Every answer carries the side channel headers ``x-emulator-correct`` (``1``, ``0`` or
``unknown``), ``x-emulator-prompt-hash``, ``x-emulator-task``, ``x-emulator-drifted`` and
``x-emulator-cost-usd`` (usage × catalog price). Correctness never appears in a response body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from pydantic import ValidationError

from services.catalog import Catalog
from services.contracts import prompt_hash

from .corpus import Answer, Corpus, PromptRecord, count_tokens, normalize, prompt_tokens, split_words
from .faults import TIER_LATENCY, DriftRule, DriftTable, FaultDecision, FaultSpec, FaultTable, Latency
from .judge import JUDGE_MODEL, JudgePromptError, grade
from .settings import EmulatorConfig

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
Send = Any
Receive = Any


class StreamCut(Exception):
    """Raised inside a stream to make the server drop the connection (an injected fault)."""


class _ClientGone(Exception):
    pass


class HTTPError(Exception):
    """An error answered in the API's own error format."""

    def __init__(
        self, status: int, message: str, etype: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.etype, self.code, self.param = status, message, etype, code, param
        self.headers: list[tuple[bytes, bytes]] = []


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    owned_by: str
    price_in: float  # USD per 1M tokens
    price_out: float

    def cost(self, prompt_toks: int, completion_toks: int) -> float:
        return (prompt_toks * self.price_in + completion_toks * self.price_out) / 1e6


@dataclass
class Turn:
    """What a chat request resolved to: the answer, its tokens, its truth, its faults."""

    model: ModelInfo
    text: str
    finish: str
    prompt_toks: int
    completion_toks: int
    correct: float | None
    p_hash: str
    task: str
    drifted: bool
    fault: FaultDecision

    def side_headers(self) -> list[tuple[bytes, bytes]]:
        correct = "unknown" if self.correct is None else f"{self.correct:g}"
        return [
            (b"x-emulator-correct", correct.encode()),
            (b"x-emulator-prompt-hash", self.p_hash.encode()),
            (b"x-emulator-task", self.task.encode("utf-8", "replace")),
            (b"x-emulator-drifted", b"1" if self.drifted else b"0"),
            (
                b"x-emulator-cost-usd",
                f"{self.model.cost(self.prompt_toks, self.completion_toks):.10f}".encode(),
            ),
        ]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _text_of(content: Any) -> str:
    """The text of an OpenAI/Anthropic message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "\n".join(parts)
    return ""


class EmulatorApp:
    """The ASGI app. Holds the corpus, catalog prices and the mutable fault/drift/latency state."""

    def __init__(
        self,
        corpus: Corpus,
        catalog: Catalog,
        config: EmulatorConfig | None = None,
        *,
        speed: float = 1.0,
        seed: int = 0,
        chunk_words: int = 4,
        api_key: str | None = None,
    ) -> None:
        self.corpus = corpus
        self.config = config or EmulatorConfig()
        self.seed = seed
        self.chunk_words = chunk_words
        self.api_key = api_key
        self.started = time.time()
        providers = {p.name: p.kind for p in catalog.providers}
        self.models: dict[str, ModelInfo] = {
            m.id: ModelInfo(m.id, providers.get(m.provider, "openai"), m.price.input, m.price.output)
            for m in catalog.models
        }
        self.models[JUDGE_MODEL] = ModelInfo(JUDGE_MODEL, "switchyard", 0.0, 0.0)
        profiles = {m.id: TIER_LATENCY.get(m.tier, TIER_LATENCY["mid"]) for m in catalog.models}
        profiles[JUDGE_MODEL] = TIER_LATENCY["budget"]
        self._base_profiles = profiles
        self._base_speed = speed
        self._models_body = _dumps(
            {
                "object": "list",
                "data": [
                    {"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by}
                    for m in self.models.values()
                ],
            }
        )
        self.reset()
        self._routes = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/messages"): self._messages,
            ("GET", "/v1/models"): self._list_models,
            ("POST", "/v1/feedback"): self._feedback,
            ("GET", "/healthz"): self._health,
            ("GET", "/readyz"): self._health,
            ("GET", "/emulator/truth"): self._truth_get,
            ("POST", "/emulator/truth"): self._truth_post,
            ("GET", "/emulator/faults"): self._faults_get,
            ("POST", "/emulator/faults"): self._faults_post,
            ("DELETE", "/emulator/faults"): self._faults_delete,
            ("GET", "/emulator/drift"): self._drift_get,
            ("POST", "/emulator/drift"): self._drift_post,
            ("DELETE", "/emulator/drift"): self._drift_delete,
            ("POST", "/emulator/latency"): self._latency_post,
            ("POST", "/emulator/reset"): self._reset,
            ("GET", "/emulator/stats"): self._stats,
            ("GET", "/emulator/feedback"): self._feedback_get,
        }

    # ---- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the start config: faults, drift, latency, counters, feedback."""
        self.faults = FaultTable(self.seed, self.config.faults)
        self.drift = DriftTable(self.config.drift)
        self.latency = Latency({**self._base_profiles, **self.config.latency}, self._base_speed, self.seed)
        self.requests: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.feedback: list[dict] = []

    # ---- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        anthropic = path == "/v1/messages"
        handler = self._routes.get((scope["method"], path))
        try:
            if handler is None and scope["method"] == "GET" and path.startswith("/v1/models/"):
                info = self._model(path[len("/v1/models/") :])
                await _send_json(
                    send, 200, {"id": info.id, "object": "model", "created": 0, "owned_by": info.owned_by}
                )
                return
            if handler is None:
                if any(p == path for _, p in self._routes):
                    raise HTTPError(
                        405, f"method {scope['method']} not allowed on {path}", "invalid_request_error"
                    )
                raise HTTPError(
                    404, f"no route {scope['method']} {path}", "invalid_request_error", "not_found"
                )
            await handler(scope, receive, send)
        except HTTPError as err:
            await self._send_error(send, err, anthropic)
        except _ClientGone:
            return
        except StreamCut:
            raise
        except Exception:
            # a bug, not an injected fault: answer in the API's error shape if nothing was sent yet
            log.exception("emulator: unhandled error on %s %s", scope["method"], path)
            try:
                await self._send_error(
                    send, HTTPError(500, "emulator internal error", "server_error"), anthropic
                )
            except Exception:  # noqa: BLE001 - the response had started; the server closes the connection
                pass

    async def _send_error(self, send: Send, err: HTTPError, anthropic: bool) -> None:
        if anthropic:
            etype = _ANTHROPIC_TYPES.get(
                err.status, "api_error" if err.status >= 500 else "invalid_request_error"
            )
            body = {"type": "error", "error": {"type": etype, "message": err.message}}
        else:
            etype = err.etype or _OPENAI_TYPES.get(err.status, "server_error")
            body = {"error": {"message": err.message, "type": etype, "param": err.param, "code": err.code}}
        await _send_json(send, err.status, body, err.headers)

    # ---- helpers -------------------------------------------------------------------------------
    def _check_auth(self, scope: dict) -> None:
        if not self.api_key:
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        if auth != f"Bearer {self.api_key}" and key != self.api_key:
            raise HTTPError(
                401, "Incorrect API key provided (emulator).", "invalid_request_error", "invalid_api_key"
            )

    def _model(self, name: Any) -> ModelInfo:
        if not isinstance(name, str) or not name:
            raise HTTPError(
                400, "'model' is required and must be a string", "invalid_request_error", None, "model"
            )
        info = self.models.get(name)
        if info is None:
            raise HTTPError(
                404, f"The model `{name}` does not exist", "invalid_request_error", "model_not_found", "model"
            )
        return info

    def answer_for(
        self, record: PromptRecord | None, model: str, question: str
    ) -> tuple[Answer, str, str, bool]:
        """(answer, prompt hash, task, drifted) for a question to a model, drift applied."""
        if record is None:
            h = prompt_hash(normalize(question))
            from .corpus import generic_answer

            return Answer(generic_answer(h, model), None), h, "unknown", False
        drifted = self.drift.is_drifted(model, record.task, record.dataset, record.prompt_hash)
        ans = record.drifted(model) if drifted else record.recorded(model)
        return ans, record.prompt_hash, record.task, drifted and ans.drifted

    def _resolve(
        self, info: ModelInfo, texts: list[str], question: str, max_tokens: Any, stream: bool
    ) -> Turn:
        if info.id == JUDGE_MODEL:
            try:
                verdict = grade(self.corpus, question)
            except JudgePromptError as exc:
                raise HTTPError(400, str(exc), "invalid_request_error", None, "messages") from exc
            text, correct, h, task, drifted = (
                verdict.reply,
                None,
                prompt_hash(normalize(question)),
                "judge",
                False,
            )
        else:
            record = self.corpus.lookup(question)
            ans, h, task, drifted = self.answer_for(record, info.id, question)
            text, correct = ans.text, ans.correct
        finish = "stop"
        completion = count_tokens(text)
        if isinstance(max_tokens, int) and 0 < max_tokens < completion:
            text, completion, finish = text[: max_tokens * 4], max_tokens, "length"
        fault = self.faults.decide(info.id, stream)
        self.requests[info.id] += 1
        if fault.kind != "none":
            self.fault_counts[fault.kind] += 1
        return Turn(info, text, finish, prompt_tokens(texts), completion, correct, h, task, drifted, fault)

    async def _pre_answer_faults(self, turn: Turn) -> None:
        """Apply the faults that happen before any answer byte: hang, 429, error status."""
        f = turn.fault
        if f.kind == "hang":
            await asyncio.sleep(f.hang_s)
        elif f.kind == "rate_limit":
            err = HTTPError(
                429,
                f"Rate limit reached for {turn.model.id} (emulated); retry later.",
                "requests",
                "rate_limit_exceeded",
            )
            err.headers = [
                (b"retry-after", f"{f.retry_after_s:g}".encode()),
                (b"retry-after-ms", str(int(f.retry_after_s * 1000)).encode()),
            ]
            raise err
        elif f.kind == "error":
            err = HTTPError(
                f.status,
                f"The upstream {turn.model.id} failed with {f.status} (emulated fault).",
                _OPENAI_TYPES.get(f.status, "server_error"),
                "emulated_fault",
            )
            raise err

    # ---- OpenAI ------------------------------------------------------------------------------
    async def _chat(self, scope: dict, receive: Receive, send: Send) -> None:
        self._check_auth(scope)
        req = await _json_body(receive)
        info = self._model(req.get("model"))
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
            t = _text_of(m.get("content"))
            texts.append(t)
            if m["role"] == "user":
                question = t
        if question is None:
            raise HTTPError(
                400, "'messages' needs at least one user message", "invalid_request_error", None, "messages"
            )
        stream = req.get("stream") is True
        max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
        turn = self._resolve(info, texts, question, max_tokens, stream)
        await self._pre_answer_faults(turn)
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
        if not stream:
            delay = self.latency.ttft(info.id) + self.latency.decode(info.id, turn.completion_toks)
            if delay:
                await asyncio.sleep(delay)
            body = _dumps(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": info.id,
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
            )
            if turn.fault.kind == "malformed":
                body = body[: max(1, len(body) // 2)]
            await _send(send, 200, body, headers)
            return
        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        usage_tail = ',"usage":null}' if include_usage else "}"
        head = (
            f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
            f'"model":{json.dumps(info.id)},"service_tier":"default","system_fingerprint":null,"choices":['
        )

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            fin = "null" if finish is None else f'"{finish}"'
            return (
                f'{head}{{"index":0,"delta":{json.dumps(delta, ensure_ascii=False)},"logprobs":null,'
                f'"finish_reason":{fin}}}]{usage_tail}\n\n'
            ).encode()

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    *headers,
                ],
            }
        )
        pieces = split_words(turn.text)
        n = self.chunk_words
        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": "".join(pieces[i : i + n])}) for i in range(0, len(pieces), n)]
        events.append(chunk({}, turn.finish))
        if include_usage:
            events.append((f'{head}],"usage":{_dumps(usage).decode()}}}\n\n').encode())
        events.append(b"data: [DONE]\n\n")
        await self._stream_events(
            send, turn, events, b'data: {"id":"' + rid.encode() + b'","object":"chat.comp\n\n'
        )

    async def _stream_events(self, send: Send, turn: Turn, events: list[bytes], broken: bytes) -> None:
        """Send SSE events with first-token and decode latency, applying stream faults."""
        f = turn.fault
        model = turn.model.id
        if f.kind == "none" and self.latency.speed <= 0:
            # no latency to pace: one write of the whole (still chunk-by-chunk) SSE stream
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
            return
        per_event = max(1, turn.completion_toks // max(1, len(events) - 2))
        ttft = self.latency.ttft(model)
        if ttft:
            await asyncio.sleep(ttft)
        for i, ev in enumerate(events):
            if f.kind == "stream_cut" and i >= f.cut_after:
                if f.cut_mode == "drop":
                    raise StreamCut(f"{model}: stream cut after {i} chunks (emulated fault)")
                break
            if f.kind == "malformed" and i == 1:
                ev = broken
            if i > 1:
                d = self.latency.decode(model, per_event)
                if d:
                    await asyncio.sleep(d)
            await send({"type": "http.response.body", "body": ev, "more_body": True})
            if f.kind == "malformed" and i == 1:
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _list_models(self, scope: dict, receive: Receive, send: Send) -> None:
        await _send(send, 200, self._models_body)

    # ---- Anthropic ---------------------------------------------------------------------------
    async def _messages(self, scope: dict, receive: Receive, send: Send) -> None:
        self._check_auth(scope)
        req = await _json_body(receive)
        info = self._model(req.get("model"))
        max_tokens = req.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise HTTPError(400, "max_tokens: field required (a positive integer)", "invalid_request_error")
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPError(400, "messages: at least one message is required", "invalid_request_error")
        system = req.get("system")
        if system is not None and not isinstance(system, str | list):
            raise HTTPError(400, "system: must be a string or a list of text blocks", "invalid_request_error")
        texts = [_text_of(system)] if system else []
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
            t = _text_of(content)
            texts.append(t)
            if m["role"] == "user":
                question = t
        if question is None or messages[0].get("role") != "user":
            raise HTTPError(
                400, "messages: the first message must use the 'user' role", "invalid_request_error"
            )
        stream = req.get("stream") is True
        turn = self._resolve(info, texts, question, max_tokens, stream)
        f = turn.fault
        if f.kind == "error" and f.status == 503:
            f = FaultDecision("error", 529)
            turn.fault = f
        await self._pre_answer_faults(turn)
        mid = "msg_" + uuid.uuid4().hex[:24]
        headers = [(b"request-id", ("req_" + mid[4:]).encode()), *turn.side_headers()]
        stop = "max_tokens" if turn.finish == "length" else "end_turn"
        usage = {
            "input_tokens": turn.prompt_toks,
            "output_tokens": turn.completion_toks,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if not stream:
            delay = self.latency.ttft(info.id) + self.latency.decode(info.id, turn.completion_toks)
            if delay:
                await asyncio.sleep(delay)
            body = _dumps(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": info.id,
                    "content": [{"type": "text", "text": turn.text}],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage,
                }
            )
            if turn.fault.kind == "malformed":
                body = body[: max(1, len(body) // 2)]
            await _send(send, 200, body, headers)
            return

        def event(name: str, data: dict) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    *headers,
                ],
            }
        )
        pieces = split_words(turn.text)
        n = self.chunk_words
        start_usage = {**usage, "output_tokens": 1}
        events = [
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": info.id,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
        ]
        events.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
        )
        events += [
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "".join(pieces[i : i + n])},
                },
            )
            for i in range(0, len(pieces), n)
        ]
        events.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": turn.completion_toks},
                },
            )
        )
        events.append(event("message_stop", {"type": "message_stop"}))
        await self._stream_events(
            send, turn, events, b'event: content_block_delta\ndata: {"type": "conte\n\n'
        )

    # ---- side channels and admin ---------------------------------------------------------------
    async def _health(self, scope: dict, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"status": "ok", "prompts": len(self.corpus), "models": len(self.models)})

    def truth(self, record: PromptRecord, model: str | None) -> dict:
        """Ground truth of a prompt (all models, or one), with the drift active now."""
        out: dict[str, Any] = {
            "prompt_hash": record.prompt_hash,
            "task": record.task,
            "dataset": record.dataset,
        }
        if model is None:
            out["labels"] = dict(record.labels)
            return out
        if model not in self.models or model == JUDGE_MODEL:
            raise HTTPError(
                404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found"
            )
        recorded = record.labels.get(model)
        ans, _, _, drifted = self.answer_for(record, model, record.prompt)
        out.update(model=model, correct=ans.correct, recorded_correct=recorded, drifted=drifted)
        return out

    async def _truth_get(self, scope: dict, receive: Receive, send: Send) -> None:
        q = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        h = q.get("prompt_hash")
        if not h:
            raise HTTPError(400, "query parameter 'prompt_hash' is required", "invalid_request_error")
        record = self.corpus.by_hash.get(h)
        if record is None:
            raise HTTPError(404, f"unknown prompt_hash {h}", "invalid_request_error", "unknown_prompt")
        await _send_json(send, 200, self.truth(record, q.get("model")))

    async def _truth_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await _json_body(receive)
        if isinstance(req.get("prompt"), str):
            record = self.corpus.lookup(req["prompt"])
        elif isinstance(req.get("prompt_hash"), str):
            record = self.corpus.by_hash.get(req["prompt_hash"])
        else:
            raise HTTPError(400, "body needs 'prompt' or 'prompt_hash'", "invalid_request_error")
        if record is None:
            raise HTTPError(404, "unknown prompt", "invalid_request_error", "unknown_prompt")
        model = req.get("model")
        await _send_json(send, 200, self.truth(record, model if isinstance(model, str) else None))

    async def _faults_get(self, scope: dict, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"faults": self.faults.snapshot()})

    async def _faults_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await _json_body(receive)
        model = req.pop("model", None)
        if not isinstance(model, str) or (model != "*" and model not in self.models):
            raise HTTPError(
                400, f"'model' must be a served model id or '*', got {model!r}", "invalid_request_error"
            )
        try:
            spec = FaultSpec.model_validate(req)
        except ValidationError as exc:
            raise HTTPError(
                400, f"invalid fault spec: {exc.errors(include_url=False)}", "invalid_request_error"
            ) from exc
        self.faults.set(model, spec)
        log.info("faults set for %s: %s", model, spec.model_dump(exclude_defaults=True))
        await _send_json(send, 200, {"faults": self.faults.snapshot()})

    async def _faults_delete(self, scope: dict, receive: Receive, send: Send) -> None:
        q = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        self.faults.clear(q.get("model"))
        await _send_json(send, 200, {"faults": self.faults.snapshot()})

    async def _drift_get(self, scope: dict, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"drift": [r.model_dump() for r in self.drift.rules], "now": time.time()})

    async def _drift_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await _json_body(receive)
        try:
            rule = DriftRule.model_validate(req)
        except ValidationError as exc:
            raise HTTPError(
                400, f"invalid drift rule: {exc.errors(include_url=False)}", "invalid_request_error"
            ) from exc
        if rule.model not in self.models:
            raise HTTPError(400, f"unknown model {rule.model!r}", "invalid_request_error")
        resolved = self.drift.add(rule)
        log.info("drift added: %s", resolved.model_dump())
        await _send_json(send, 200, {"drift": [r.model_dump() for r in self.drift.rules], "now": time.time()})

    async def _drift_delete(self, scope: dict, receive: Receive, send: Send) -> None:
        self.drift.clear()
        await _send_json(send, 200, {"drift": []})

    async def _latency_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await _json_body(receive)
        speed = req.get("speed")
        if not isinstance(speed, int | float) or isinstance(speed, bool) or speed < 0:
            raise HTTPError(400, "'speed' must be a number >= 0", "invalid_request_error")
        self.latency.speed = float(speed)
        await _send_json(send, 200, {"speed": self.latency.speed})

    async def _reset(self, scope: dict, receive: Receive, send: Send) -> None:
        await _json_body(receive, allow_empty=True)
        self.reset()
        await _send_json(send, 200, {"status": "reset"})

    async def _stats(self, scope: dict, receive: Receive, send: Send) -> None:
        await _send_json(
            send,
            200,
            {
                "requests": dict(self.requests),
                "total_requests": sum(self.requests.values()),
                "faults": dict(self.fault_counts),
                "feedback": len(self.feedback),
                "speed": self.latency.speed,
                "uptime_s": round(time.time() - self.started, 3),
            },
        )

    async def _feedback(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await _json_body(receive)
        rid, score, label = req.get("request_id"), req.get("score"), req.get("label")
        if not isinstance(rid, str) or not rid:
            raise HTTPError(422, "'request_id' is required", "invalid_request_error", None, "request_id")
        if score is None and label is None:
            raise HTTPError(
                422, "feedback needs 'score' (0..1) or 'label'", "invalid_request_error", None, "score"
            )
        if score is not None and (not isinstance(score, int | float) or not 0 <= score <= 1):
            raise HTTPError(422, "'score' must be a number in [0, 1]", "invalid_request_error", None, "score")
        if len(self.feedback) < 1_000_000:
            self.feedback.append(req)
        await _send_json(send, 202, {"status": "accepted", "request_id": rid})

    async def _feedback_get(self, scope: dict, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"feedback": self.feedback})


async def _json_body(receive: Receive, allow_empty: bool = False) -> dict:
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _ClientGone
        body += msg.get("body", b"")
        if len(body) > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes", "invalid_request_error")
        if not msg.get("more_body"):
            break
    if not body and allow_empty:
        return {}
    try:
        req = json.loads(body)
    except ValueError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}", "invalid_request_error") from exc
    if not isinstance(req, dict):
        raise HTTPError(400, "request body must be a JSON object", "invalid_request_error")
    return req


async def _send(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(
    send: Send, status: int, obj: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send(send, status, _dumps(obj), headers)

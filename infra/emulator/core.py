"""What the emulator answers, whatever the wire protocol: model resolution, the recorded answer
(drift applied) or the judge's grade, usage, injected faults and latency pacing.

One code path serves both protocols (:meth:`Emulator.answer`): the wire module parses the request
into a :class:`ChatRequest` and frames the :class:`Turn` as its body or SSE events (a
:class:`Reply`); everything else happens here.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from services.catalog import Catalog
from services.contracts import prompt_hash

from .asgi import Headers, HTTPError, Send, StreamCut, send_body, start_sse
from .corpus import Answer, Corpus, PromptRecord, count_tokens, generic_answer, normalize, prompt_tokens
from .faults import TIER_LATENCY, DriftTable, FaultDecision, FaultTable, Latency
from .judge import JUDGE_MODEL, JudgePromptError, grade
from .prompt_cache import CacheUse, PromptCache
from .settings import EmulatorConfig
from .structured import ToolCall, ToolSpec, json_answer, tool_call

# error types of the OpenAI API by status (also the type of an injected error status)
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    owned_by: str
    price_in: float  # USD per 1M tokens
    price_out: float
    price_cached: float | None = None  # prompt tokens read from the prompt cache; None: no caching
    price_write: float | None = None  # prompt tokens written to it (Anthropic); None: price_in
    provider: str | None = None  # served under /p/<provider>/ at that offer's price; None: listed

    def cost(self, prompt_toks: int, completion_toks: int, cached: int = 0, written: int = 0) -> float:
        """USD of a call; ``cached`` and ``written`` are part of ``prompt_toks``."""
        fresh = prompt_toks - cached - written
        write_rate = self.price_in if self.price_write is None else self.price_write
        cached_rate = self.price_in if self.price_cached is None else self.price_cached
        return (
            fresh * self.price_in
            + cached * cached_rate
            + written * write_rate
            + completion_toks * self.price_out
        ) / 1e6

    def card(self) -> dict[str, Any]:
        """The model's entry in ``/v1/models``."""
        return {"id": self.id, "object": "model", "created": 0, "owned_by": self.owned_by}


@dataclass(frozen=True)
class ChatRequest:
    """A chat request as the core sees it, parsed from either wire protocol."""

    model: ModelInfo
    texts: list[str]  # the text of every message (and the system prompt): the usage
    question: str  # the last user message: what the corpus is asked
    max_tokens: Any
    stream: bool
    include_usage: bool = False  # OpenAI ``stream_options.include_usage``
    n: int = 1  # choices to answer (OpenAI ``n``)
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"  # "auto" | "none" | "required" (a named tool: ``forced_tool``)
    forced_tool: str | None = None
    after_tool_result: bool = False  # the last message hands back a tool's result
    json_schema: dict[str, Any] | None = None  # a JSON answer matching this schema was asked for
    # prompt caching (.prompt_cache): None, OpenAI's automatic prefix rule; else the indices of
    # ``texts`` that end a prefix marked with Anthropic's ``cache_control``
    cache_breaks: tuple[int, ...] | None = None

    @property
    def calls_tool(self) -> bool:
        """Whether the answer is a tool call: tools offered and allowed, and either forced or not
        just given a tool's result (then the model answers in text, so a tool loop ends)."""
        if not self.tools or self.tool_choice == "none":
            return False
        return self.forced_tool is not None or self.tool_choice == "required" or not self.after_tool_result


@dataclass
class Turn:
    """What a chat request resolved to: the answer, its tokens, its truth, its faults."""

    model: ModelInfo
    text: str
    finish: str  # "stop" | "length"
    prompt_toks: int
    completion_toks: int
    correct: float | None
    p_hash: str
    task: str
    drifted: bool
    fault: FaultDecision
    call: ToolCall | None = None  # the answer is this tool call (``text`` is empty)
    choices: int = 1  # every choice carries the same answer; usage counts each
    cache: CacheUse = CacheUse()  # of ``prompt_toks``, read from / written to the prompt cache

    @property
    def billed_completion(self) -> int:
        return self.completion_toks * self.choices

    @property
    def cost_usd(self) -> float:
        return self.model.cost(self.prompt_toks, self.billed_completion, self.cache.read, self.cache.written)

    def side_headers(self) -> Headers:
        correct = "unknown" if self.correct is None else f"{self.correct:g}"
        return [
            (b"x-emulator-correct", correct.encode()),
            (b"x-emulator-prompt-hash", self.p_hash.encode()),
            (b"x-emulator-task", self.task.encode("utf-8", "replace")),
            (b"x-emulator-drifted", b"1" if self.drifted else b"0"),
            (
                b"x-emulator-cost-usd",
                f"{self.cost_usd:.10f}".encode(),
            ),
        ]


@dataclass
class Reply:
    """A turn framed by a wire protocol: the JSON body, or the SSE events of a stream."""

    headers: Headers
    body: bytes = b""
    events: list[bytes] | None = None
    broken_event: bytes = b""  # what a "malformed" fault sends in place of the first content event


class Wire(Protocol):
    """A wire protocol: request parsing and response framing only."""

    def parse(self, req: dict, model: ModelInfo) -> ChatRequest: ...

    def fault(self, decision: FaultDecision) -> FaultDecision: ...

    def render(self, turn: Turn, chat: ChatRequest) -> Reply: ...

    def error_body(self, err: HTTPError) -> dict: ...


def text_of(content: Any) -> str:
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


class Emulator:
    """The corpus, catalog prices and the mutable fault/drift/latency state, and the one code path
    that turns a chat request into a paced answer."""

    def __init__(
        self,
        corpus: Corpus,
        catalog: Catalog,
        config: EmulatorConfig | None = None,
        *,
        speed: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.corpus = corpus
        self.config = config or EmulatorConfig()
        self.seed = seed
        self.started = time.time()
        providers = {p.name: p.kind for p in catalog.providers}
        self.models: dict[str, ModelInfo] = {
            m.id: ModelInfo(
                m.id,
                providers.get(m.provider, "openai"),
                m.price.input,
                m.price.output,
                m.price.cached_input,
                m.price.cache_write,
            )
            for m in catalog.models
        }
        self.models[JUDGE_MODEL] = ModelInfo(JUDGE_MODEL, "switchyard", 0.0, 0.0)
        # every catalog provider's name is a path prefix (/p/<name>/...) that serves the models it
        # has an offer for, at that offer's price, with its own faults (provider arbitrage)
        self.providers: frozenset[str] = frozenset(providers)
        self.offers: dict[tuple[str, str], ModelInfo] = {
            (o.provider, m.id): ModelInfo(
                m.id,
                providers[o.provider],
                o.price.input,
                o.price.output,
                o.price.cached_input,
                o.price.cache_write,
                provider=o.provider,
            )
            for m in catalog.models
            for o in m.all_offers
        }
        profiles = {m.id: TIER_LATENCY.get(m.tier, TIER_LATENCY["mid"]) for m in catalog.models}
        profiles[JUDGE_MODEL] = TIER_LATENCY["budget"]
        self._base_profiles = profiles
        self._base_speed = speed
        self.reset()

    def reset(self) -> None:
        """Back to the start config: faults, drift, latency, counters, feedback."""
        self.faults = FaultTable(self.seed, self.config.faults)
        self.drift = DriftTable(self.config.drift)
        self.latency = Latency({**self._base_profiles, **self.config.latency}, self._base_speed, self.seed)
        self.requests: Counter[str] = Counter()
        self.provider_requests: Counter[tuple[str, str]] = Counter()  # (provider, model), /p/ only
        self.fault_counts: Counter[str] = Counter()
        self.feedback: list[dict] = []
        self.prompt_cache = PromptCache()

    # ---- what to answer ------------------------------------------------------------------------
    def model(self, name: Any, provider: str | None = None) -> ModelInfo:
        """The served model ``name`` (400 when missing, 404 when unknown or, under ``provider``,
        not sold by it)."""
        if not isinstance(name, str) or not name:
            raise HTTPError(
                400, "'model' is required and must be a string", "invalid_request_error", None, "model"
            )
        info = self.models.get(name) if provider is None else self.offers.get((provider, name))
        if info is None:
            where = f" at {provider}" if provider is not None and name in self.models else ""
            raise HTTPError(
                404,
                f"The model `{name}` does not exist{where}",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        return info

    def answer_for(
        self, record: PromptRecord | None, model: str, question: str
    ) -> tuple[Answer, str, str, bool]:
        """(answer, prompt hash, task, drifted) for a question to a model, drift applied."""
        if record is None:
            h = prompt_hash(normalize(question))
            return Answer(generic_answer(h, model), None), h, "unknown", False
        drifted = self.drift.is_drifted(model, record.task, record.dataset, record.prompt_hash)
        ans = record.drifted(model) if drifted else record.recorded(model)
        return ans, record.prompt_hash, record.task, drifted and ans.drifted

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

    def resolve(self, chat: ChatRequest) -> Turn:
        """The answer to give (or the judge's grade), truncated to ``max_tokens``, and its fault."""
        info, question = chat.model, chat.question
        if info.id == JUDGE_MODEL:
            try:
                verdict = grade(self.corpus, question)
            except JudgePromptError as exc:
                raise HTTPError(400, str(exc), "invalid_request_error", None, "messages") from exc
            text, correct = verdict.reply, None
            h, task, drifted = prompt_hash(normalize(question)), "judge", False
        else:
            record = self.corpus.lookup(question)
            ans, h, task, drifted = self.answer_for(record, info.id, question)
            text, correct = ans.text, ans.correct
        finish, call = "stop", None
        if info.id != JUDGE_MODEL and chat.calls_tool:
            call = tool_call(chat.tools, chat.forced_tool, question, text)
            text, finish = "", "tool_calls"
        elif info.id != JUDGE_MODEL and chat.json_schema is not None:
            text = json_answer(chat.json_schema, text)
        completion = count_tokens(call.arguments if call else text)
        max_tokens = chat.max_tokens
        if call is None and isinstance(max_tokens, int) and 0 < max_tokens < completion:
            text, completion, finish = text[: max_tokens * 4], max_tokens, "length"
        fault = self.faults.decide(info.id, chat.stream, info.provider)
        self.requests[info.id] += 1
        if info.provider is not None:
            self.provider_requests[(info.provider, info.id)] += 1
        if fault.kind != "none":
            self.fault_counts[fault.kind] += 1
        return Turn(
            info,
            text,
            finish,
            prompt_tokens(chat.texts),
            completion,
            correct,
            h,
            task,
            drifted,
            fault,
            call=call,
            choices=chat.n,
            cache=self._cache_use(chat),
        )

    def _cache_use(self, chat: ChatRequest) -> CacheUse:
        """The request's prompt-cache reads and writes (none for a model without a cached rate)."""
        if chat.model.price_cached is None:
            return CacheUse()
        owner = f"{chat.model.provider or ''}/{chat.model.id}"  # each provider keeps its own cache
        return self.prompt_cache.use(owner, chat.texts, chat.cache_breaks)

    # ---- how to answer -------------------------------------------------------------------------
    async def answer(self, wire: Wire, req: dict, send: Send, provider: str | None = None) -> None:
        """Parse, resolve, apply faults, frame and pace one chat request: the whole chat route
        (``provider``: it came in under ``/p/<provider>/``)."""
        chat = wire.parse(req, self.model(req.get("model"), provider))
        turn = self.resolve(chat)
        turn.fault = wire.fault(turn.fault)
        await self._pre_answer_faults(turn)
        reply = wire.render(turn, chat)
        if reply.events is None:
            await self._send_whole(send, turn, reply)
        else:
            await start_sse(send, reply.headers)
            await self._stream(send, turn, reply.events, reply.broken_event)

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
            raise HTTPError(
                f.status,
                f"The upstream {turn.model.id} failed with {f.status} (emulated fault).",
                OPENAI_ERROR_TYPES.get(f.status, "server_error"),
                "emulated_fault",
            )

    async def _send_whole(self, send: Send, turn: Turn, reply: Reply) -> None:
        """A non-streamed answer after the whole generation time; cut in half when malformed."""
        model = turn.model.id
        delay = self.latency.ttft(model) + self.latency.decode(model, turn.completion_toks)
        if delay:
            await asyncio.sleep(delay)
        body = reply.body
        if turn.fault.kind == "malformed":
            body = body[: max(1, len(body) // 2)]
        await send_body(send, 200, body, reply.headers)

    async def _stream(self, send: Send, turn: Turn, events: list[bytes], broken: bytes) -> None:
        """Send SSE events with first-token and decode latency, applying stream faults."""
        f = turn.fault
        model = turn.model.id
        if f.kind == "none" and self.latency.speed <= 0:
            # no latency to pace: one write of the whole (still chunk-by-chunk) SSE stream
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
            return
        per_event = max(1, turn.billed_completion // max(1, len(events) - 2))
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

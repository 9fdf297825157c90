"""Fakes of the gateway's collaborators, shared by the unit tests and ``bench/gateway_overhead.py``:
an in-memory Kafka (:class:`Broker` + :class:`FakeProducer`), OpenAI wire shapes
(:func:`completion`, :func:`chunk`, :func:`sse`), a scripted upstream for ``httpx.MockTransport``
(:class:`Upstream`), a constant router (:class:`FakeRouter`), adapters over a transport
(:func:`mock_adapters`) and a whole gateway on them (:func:`fake_gateway`). Pure Python: nothing
here opens a socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from services.catalog import Catalog
from services.providers.anthropic import AnthropicAdapter
from services.providers.base import ChatAdapter
from services.providers.openai import OpenAIAdapter

from .routing import RouteRequest, RouteResult

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


class Broker:
    """What a Kafka cluster looks like to a producer: up or down, and a log of records."""

    def __init__(self, up: bool = True):
        self.up = up
        self.log: list[tuple[str, bytes | None, bytes]] = []


class FakeProducer:
    """The emitter's producer interface over a :class:`Broker`."""

    def __init__(self, broker: Broker):
        self.broker = broker

    async def start(self) -> None:
        if not self.broker.up:
            raise ConnectionError("broker down")

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> asyncio.Future:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        if self.broker.up:
            self.broker.log.append((topic, key, value or b""))
            fut.set_result(None)
        else:
            fut.set_exception(TimeoutError("request timed out"))
        return fut


def completion(model: str, text: str = "4") -> dict[str, Any]:
    """An OpenAI ``chat.completion`` body."""
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


def sse(chunks: list[dict[str, Any]], done: bool = True) -> bytes:
    """Server-sent events of ``chunks``, with ``[DONE]`` unless ``done`` is false (a cut stream)."""
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def chunk(model: str, text: str | None, finish: str | None = None) -> dict[str, Any]:
    """An OpenAI ``chat.completion.chunk``."""
    delta = {"content": text} if text is not None else {}
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class Upstream:
    """Every catalog model over ``httpx.MockTransport``: answers ``answer from <model>``, streams
    two chunks, grades with the judge, fails with 500 for the models in ``fail``, answers after
    ``delay[model]`` seconds. Records each call's model and ``x-request-id``."""

    def __init__(self) -> None:
        self.fail: set[str] = set()
        self.delay: dict[str, float] = {}
        self.calls: list[str] = []
        self.request_ids: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []  # each call's JSON body
        self.judge_grade = "1"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model = body["model"]
        self.calls.append(model)
        self.bodies.append(body)
        self.request_ids.append(request.headers.get("x-request-id"))
        if self.delay.get(model):
            await asyncio.sleep(self.delay[model])
        if model == "switchyard/judge":
            return httpx.Response(200, json=completion(model, f"GRADE: {self.judge_grade}"))
        if model in self.fail:
            return httpx.Response(500, json={"error": {"message": "down"}})
        if body.get("stream"):
            return httpx.Response(
                200,
                content=sse([chunk(model, "Hel"), chunk(model, "lo", "stop")]),
                headers={"content-type": "text/event-stream"},
            )
        return httpx.Response(200, json=completion(model, f"answer from {model}"))


class FakeRouter:
    """A router deployment that always ranks the strong model first and chooses ``choose`` (the
    weak one unless a test says otherwise)."""

    def __init__(self, choose: str = WEAK) -> None:
        self.choose = choose
        self.broken = False
        self.seen: list[RouteRequest] = []

    async def route(self, req: RouteRequest) -> RouteResult:
        if self.broken:
            raise RuntimeError("router replica died")
        self.seen.append(req)
        scores = {WEAK: 0.9, STRONG: 0.95}
        return RouteResult(scores, "v-test", self.choose, [STRONG, WEAK], 0.1, 0.05, low_margin=False)

    async def status(self) -> dict[str, Any]:
        return {"loaded": not self.broken, "version": "v-test"}


def mock_adapters(catalog: Catalog, transport: httpx.AsyncBaseTransport) -> dict[str, ChatAdapter]:
    """One adapter per catalog provider, all over ``transport``."""
    return {
        p.name: (
            AnthropicAdapter(p, transport=transport)
            if p.kind == "anthropic"
            else OpenAIAdapter(p, transport=transport)
        )
        for p in catalog.providers
    }


def fake_gateway(
    settings: Any, router: FakeRouter, catalog: Catalog, spool_dir: Any
) -> tuple[Any, Upstream, Broker]:
    """A gateway built as in production (``build_gateway``) on the fakes: the scripted upstream
    behind every provider (retries without waiting), ``router``, and an emitter into an in-memory
    broker spooling under ``spool_dir``; returns it with its upstream and broker."""
    from services.providers.pool import ProviderPool, RetryPolicy

    from .bootstrap import build_gateway
    from .emitter import EmitterConfig, EventEmitter

    upstream, broker = Upstream(), Broker()
    pool = ProviderPool(
        catalog,
        retry=RetryPolicy(initial_s=0.001, max_s=0.001, jitter_s=0),
        adapters=mock_adapters(catalog, httpx.MockTransport(upstream)),
    )
    emitter = EventEmitter(EmitterConfig(bootstrap="x:1", spool_dir=spool_dir), lambda: FakeProducer(broker))
    gw = build_gateway(settings, router.route, router.status, catalog=catalog, pool=pool, emitter=emitter)
    return gw, upstream, broker

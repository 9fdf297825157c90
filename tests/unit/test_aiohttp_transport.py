"""The aiohttp wire under the httpx adapters: real HTTP on 127.0.0.1 (an aiohttp test server)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket

import httpx
import pytest
from aiohttp import web

from services.errors import UpstreamError, UpstreamTimeout
from services.providers.aiohttp_transport import AiohttpTransport
from services.providers.base import Timeouts
from services.providers.http import make_client, post_json


async def _chat(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response(
        {
            "echo": body,
            "auth": request.headers.get("authorization"),
            "ct": request.headers.get("content-type"),
            "rid": request.headers.get("x-request-id"),
        }
    )


async def _sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(3):
        await resp.write(f"data: {json.dumps({'i': i})}\n\n".encode())
        await asyncio.sleep(0.01)
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _cut(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b'data: {"i": 0}\n\n')
    request.transport.close()  # the connection dies mid-stream
    return resp


async def _hang(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({})


async def _gzip(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(b'{"ok": true}'),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )


async def _status(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"retry-after": "0.5"})


@pytest.fixture
async def server():
    app = web.Application()
    app.add_routes(
        [
            web.post("/v1/chat", _chat),
            web.post("/v1/sse", _sse),
            web.post("/v1/cut", _cut),
            web.post("/v1/hang", _hang),
            web.get("/v1/gzip", _gzip),
            web.post("/v1/status", _status),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def _client(base: str, read_s: float = 2.0) -> httpx.AsyncClient:
    return make_client(base, Timeouts(1.0, read_s, 5.0), {"authorization": "Bearer k"})


def test_default_client_uses_aiohttp():
    c = _client("http://127.0.0.1:1/v1")
    assert isinstance(c._transport, AiohttpTransport)
    plain = make_client("http://127.0.0.1:1/v1", Timeouts(1.0, 2.0, 5.0), {}, wire="httpx")
    assert not isinstance(plain._transport, AiohttpTransport)


def test_gateway_setting_chooses_the_wire():
    from services.catalog import load_catalog
    from services.gateway.settings import GatewaySettings
    from services.providers.pool import ProviderPool

    catalog = load_catalog(None)
    wire = GatewaySettings(providers_transport="httpx").providers_transport
    pool = ProviderPool(catalog, wire=wire)
    assert not any(isinstance(a._client._transport, AiohttpTransport) for a in pool.adapters.values())
    default = ProviderPool(catalog).adapters.values()
    assert all(isinstance(a._client._transport, AiohttpTransport) for a in default)


async def test_post_json_round_trip(server):
    c = _client(server)
    try:
        out = await post_json(c, "up", "/chat", {"q": "héllo", "n": [1, 2]}, 5.0)
        assert out == {
            "echo": {"q": "héllo", "n": [1, 2]},
            "auth": "Bearer k",
            "ct": "application/json",
            "rid": None,
        }
        # the pooled connection is reused for a second call
        assert (await post_json(c, "up", "/chat", {"q": 2}, 5.0))["echo"] == {"q": 2}
    finally:
        await c.aclose()


async def test_sse_lines_stream(server):
    c = _client(server)
    try:
        async with c.stream("POST", "/sse", json={}) as resp:
            lines = [line async for line in resp.aiter_lines() if line]
        assert lines == ['data: {"i": 0}', 'data: {"i": 1}', 'data: {"i": 2}', "data: [DONE]"]
    finally:
        await c.aclose()


async def test_cut_stream_raises_httpx_error(server):
    c = _client(server)
    try:
        with pytest.raises(httpx.TransportError):
            async with c.stream("POST", "/cut", json={}) as resp:
                async for _ in resp.aiter_lines():
                    pass
    finally:
        await c.aclose()


async def test_read_timeout_is_upstream_timeout(server):
    c = _client(server, read_s=0.2)
    try:
        with pytest.raises(UpstreamTimeout):
            await post_json(c, "up", "/hang", {}, 5.0)
    finally:
        await c.aclose()


async def test_refused_is_upstream_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    c = _client(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(UpstreamError) as exc:
            await post_json(c, "up", "/chat", {}, 5.0)
        assert not isinstance(exc.value, UpstreamTimeout)
        assert "unreachable" in exc.value.message
    finally:
        await c.aclose()


async def test_gzip_body_decoded_once_and_status_headers(server):
    c = _client(server)
    try:
        r = await c.get("/gzip")
        assert r.json() == {"ok": True}
        with pytest.raises(UpstreamError) as exc:
            await post_json(c, "up", "/status", {}, 5.0)
        assert exc.value.http_status == 429 and exc.value.retry_after_s == 0.5
    finally:
        await c.aclose()


@pytest.mark.parametrize("wire", ["aiohttp", "httpx"])
async def test_the_bound_request_id_goes_upstream(server, wire):
    from services.request_context import bound

    c = make_client(server, Timeouts(1.0, 2.0, 5.0), {}, wire=wire)
    try:
        with bound("req_abc"):
            assert (await post_json(c, "up", "/chat", {}, 5.0))["rid"] == "req_abc"
        assert (await post_json(c, "up", "/chat", {}, 5.0))["rid"] is None
    finally:
        await c.aclose()

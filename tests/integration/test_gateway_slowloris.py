"""Slow clients against the real gateway (issue 19, item 3): 300 connections from one key send
their headers and a few bytes of a 10,000-byte body, then stall; 100 more send half their
headers. While they stall, ``/healthz``, ``/readyz`` and another client's chat completion answer
within 1 s; the stalled bodies get a 408 once the body-rate floor is passed (their slots freed),
the half-headers never reach the app (more connections than ``max_ongoing_requests`` are held,
yet health answers), and an idle keep-alive connection is closed after its timeout."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from pathlib import Path

import httpx
import pytest
from gateway_stack import emulator_catalog, make_router

from training.data import MIXTRAL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ATTACKER, NORMAL = "sk-slowloris-attacker", "sk-slowloris-normal"
STALLED, HALF_HEADERS = 300, 100
MAX_ONGOING = 320  # < STALLED + HALF_HEADERS: half-sent headers must not take slots
GRACE_S, MIN_RATE, BODY_TIMEOUT_S, KEEP_ALIVE_S = 4.0, 1024.0, 8.0, 2


def _free_port() -> int:
    for port in range(34000, 35000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 34000-34999")


@pytest.fixture(scope="module")
def gateway(data_dir, tmp_path_factory):
    import ray
    from ray import serve

    from infra.emulator.testing import run_emulator
    from services.gateway.deployments import GatewayArgs
    from services.gateway.local import deploy, start_ray

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    root = Path(__file__).resolve().parents[2] / ".state" / "gateway-test"
    router = make_router("mlp", root / "router-mlp-static", backend="static")
    tmp = tmp_path_factory.mktemp("slowloris")
    with run_emulator(data_dir=data_dir, chunk_words=4) as emu:
        args = GatewayArgs(
            router_ref=str(router),
            catalog_path=emulator_catalog(tmp, emu.base_url),
            spool_dir=tmp / "spool",
            settings={
                "api_keys": [ATTACKER, NORMAL],
                "events_enabled": False,
                "explore_enabled": False,
                "router_poll_s": 0,
                "ingress_max_ongoing_requests": MAX_ONGOING,
                "body_timeout_s": BODY_TIMEOUT_S,
                "body_min_bytes_per_s": MIN_RATE,
                "body_grace_s": GRACE_S,
                "keep_alive_timeout_s": KEEP_ALIVE_S,
            },
        )
        start_ray(args.gateway_settings(), num_cpus=2)
        port = _free_port()
        try:
            url = deploy(args, host="127.0.0.1", port=port, wait_ready_s=300)
            yield {"url": url, "port": port}
        finally:
            serve.shutdown()
            ray.shutdown()


def _chat_body() -> bytes:
    return json.dumps(
        {"model": MIXTRAL, "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    ).encode()


async def _stall_body(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {ATTACKER}\r\nContent-Length: 10000\r\n\r\n".encode()
        + b'{"model"'
    )
    await writer.drain()
    return reader, writer, time.monotonic()


async def _half_headers(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + ATTACKER.encode()
    )
    await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader, sent_at: float, wait_s: float) -> tuple[str, float]:
    """The status line of the answer (``closed`` when the connection ended without one)."""
    try:
        line = await asyncio.wait_for(reader.readline(), wait_s)
    except (TimeoutError, ConnectionError):
        return "none", time.monotonic() - sent_at
    return (line.split(b" ")[1].decode() if line else "closed"), time.monotonic() - sent_at


async def _timed(client: httpx.AsyncClient, method: str, path: str, **kw) -> tuple[int, float, dict]:
    t0 = time.monotonic()
    r = await client.request(method, path, **kw)
    return r.status_code, time.monotonic() - t0, r.json()


async def _scenario(url: str, port: int) -> dict:
    out: dict = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # warm-up: the normal client's first call (connections, the router) before the attack
        status, _, _ = await _timed(
            client,
            "POST",
            "/v1/chat/completions",
            content=_chat_body(),
            headers={"Authorization": f"Bearer {NORMAL}", "Content-Type": "application/json"},
        )
        assert status == 200
        t_attack = time.monotonic()
        stalled = await asyncio.gather(*[_stall_body(port) for _ in range(STALLED)])
        half = await asyncio.gather(*[_half_headers(port) for _ in range(HALF_HEADERS)])
        out["open_s"] = time.monotonic() - t_attack
        await asyncio.sleep(0.5)  # every stalled request is in the app, reading its body
        health, ready, chat = [], [], []
        # each probe on a fresh connection, as a load balancer's or a new client's would be
        async with httpx.AsyncClient(
            base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        ) as c:
            while time.monotonic() - t_attack < GRACE_S - 1.0:
                health.append(await _timed(c, "GET", "/healthz"))
                ready.append(await _timed(c, "GET", "/readyz"))
                chat.append(
                    await _timed(
                        c,
                        "POST",
                        "/v1/chat/completions",
                        content=_chat_body(),
                        headers={"Authorization": f"Bearer {NORMAL}", "Content-Type": "application/json"},
                    )
                )
        out["probes"] = {"health": health, "ready": ready, "chat": chat}
        answers = await asyncio.gather(*[_answer(r, sent, BODY_TIMEOUT_S + 10) for r, _, sent in stalled])
        out["stalled"] = answers
        # the half-sent headers never reached the app: no answer, still open
        out["half"] = await asyncio.gather(*[_answer(r, time.monotonic(), 0.5) for r, _ in half])
        # after the attack the gateway still serves
        out["after"] = [
            await _timed(client, "GET", "/healthz"),
            await _timed(
                client,
                "POST",
                "/v1/chat/completions",
                content=_chat_body(),
                headers={"Authorization": f"Bearer {NORMAL}", "Content-Type": "application/json"},
            ),
        ]
        for _, w, _ in stalled:
            w.close()
        for _, w in half:
            w.close()
    # an idle keep-alive connection is closed after KEEP_ALIVE_S
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    await writer.drain()
    t0 = time.monotonic()
    await reader.readuntil(b"\r\n\r\n")
    await reader.read(100)  # the small body
    try:
        rest = await asyncio.wait_for(reader.read(), KEEP_ALIVE_S + 5)
        out["idle_closed_s"] = time.monotonic() - t0 if rest == b"" else None
    except TimeoutError:
        out["idle_closed_s"] = None
    writer.close()
    return out


def test_slowloris_from_one_key_leaves_health_and_other_clients_answering(gateway) -> None:
    t0 = time.monotonic()
    out = asyncio.run(_scenario(gateway["url"], gateway["port"]))
    took = time.monotonic() - t0
    probes = out["probes"]
    print(
        f"\nopened {STALLED}+{HALF_HEADERS} in {out['open_s']:.2f}s; "
        + "; ".join(f"{k}: n={len(v)} max={max(t for _, t, _ in v) * 1000:.0f}ms" for k, v in probes.items())
    )
    stalled_codes = {code for code, _ in out["stalled"]}
    freed = [t for _, t in out["stalled"]]
    print(
        f"stalled answers {sorted(stalled_codes)} after {min(freed):.2f}-{max(freed):.2f}s; "
        f"half-headers {sorted({c for c, _ in out['half']})}; idle closed after {out['idle_closed_s']}s; "
        f"scenario {took:.1f}s"
    )
    for name in ("health", "ready", "chat"):
        assert probes[name], name
        for status, seconds, body in probes[name]:
            assert status == 200, (name, body)
            assert seconds < 1.0, (name, seconds)
    # every stalled body got a 408 (the OpenAI error shape is checked below), near the grace + a
    # few bytes' credit, well before the whole-body deadline
    assert stalled_codes == {"408"}, out["stalled"][:5]
    assert GRACE_S - 0.5 < min(freed) and max(freed) < GRACE_S + 3.0
    # the half-sent headers are held by the HTTP server, not the app: no answer, no slot
    assert {c for c, _ in out["half"]} == {"none"}
    for status, seconds, _ in out["after"]:
        assert status == 200 and seconds < 1.0
    assert out["idle_closed_s"] is not None and out["idle_closed_s"] < KEEP_ALIVE_S + 2
    assert took < 60


def test_a_stalled_body_gets_the_openai_408(gateway) -> None:
    async def one() -> tuple[bytes, bytes]:
        reader, writer, _ = await _stall_body(gateway["port"])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GRACE_S + 5)
        length = int(
            next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        )
        body = await reader.readexactly(length)
        rest = await asyncio.wait_for(reader.read(), 5)  # closed after the answer
        writer.close()
        return head, body + rest

    head, body = asyncio.run(one())
    assert head.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in head.lower()
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "request_timeout"
    assert "8 of 10000 bytes" in err["message"]

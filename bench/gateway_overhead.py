"""In-process cost of the gateway's own code per request (no Ray, no network): FastAPI app +
service + provider pool + emitter, with the unit tests' in-memory upstream, constant router and
in-memory broker. ``python bench/gateway_overhead.py`` prints p50/p99 ms and requests/s."""

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import httpx

from services.catalog import load_catalog
from services.gateway.app import create_app
from services.gateway.bootstrap import build_gateway
from services.gateway.emitter import EmitterConfig, EventEmitter
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import Broker, FakeProducer, FakeRouter, Upstream, mock_adapters
from services.providers.pool import ProviderPool

CATALOG = load_catalog()
KEY = "sk-bench"


def body() -> dict:
    return {"model": "switchyard/auto", "messages": [{"role": "user", "content": "What is 2+2?"}]}

logging.disable(logging.WARNING)


async def main():
    up, router, broker = Upstream(), FakeRouter(), Broker()
    pool = ProviderPool(CATALOG, adapters=mock_adapters(CATALOG, httpx.MockTransport(up)))
    em = EventEmitter(
        EmitterConfig(bootstrap="x:1", spool_dir=Path(tempfile.mkdtemp())),
        lambda: FakeProducer(broker),
    )
    gw = build_gateway(
        GatewaySettings(api_key_hashes=[hash_key(KEY)]),
        router.route,
        router.status,
        catalog=CATALOG,
        pool=pool,
        emitter=em,
    )
    c = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gw)),
        base_url="http://gw",
        headers={"authorization": f"Bearer {KEY}"},
    )
    for _ in range(50):
        await c.post("/v1/chat/completions", json=body())
    lat = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(1000):
        s = time.perf_counter()
        r = await c.post("/v1/chat/completions", json=body())
        lat.append(time.perf_counter() - s)
        assert r.status_code == 200
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    lat.sort()
    print(
        json.dumps(
            {
                "requests": 1000,
                "per_request_ms_p50": lat[500] * 1000,
                "p99_ms": lat[990] * 1000,
                "rps_one_core": 1000 / el,
                # CPU of client + app + in-memory upstream: the figure that ignores other load
                "cpu_ms_per_request": cpu,
                "load_avg_1m": __import__("os").getloadavg()[0],
            }
        )
    )
    await em.flush(10)
    await gw.stop()


asyncio.run(main())

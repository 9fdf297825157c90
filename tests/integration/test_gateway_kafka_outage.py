"""Kill the broker mid-run: requests keep being answered without waiting on Kafka, events spool
locally, and once the broker is back every event arrives exactly once (count = requests).

Uses a private single-node Kafka (its own ports and data dir) so the shared stack is untouched,
the real emulator subprocess, and the gateway app in-process (no Ray: this test is about the
emitter)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from gateway_stack import consume_all, emulator_catalog

from services.contracts.events import CallEvent
from services.contracts.settings import StackSettings
from services.contracts.topics import CALLS, FEEDBACK

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_kafka(tmp_path: Path, kafka_bootstrap):  # kafka_bootstrap: the stack (and its jars) must exist
    from infra.stack import Kafka

    libs = StackSettings().kafka_libs.resolve()
    settings = StackSettings(
        state_dir=tmp_path / "kstate",
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        kafka_libs_dir=libs,
        kafka_heap="256m",
        ready_timeout_s=120,
    )
    kafka = Kafka(settings)
    kafka.start()
    yield kafka
    kafka.stop(timeout_s=20)


async def test_broker_outage_loses_and_duplicates_nothing(private_kafka, data_dir, tmp_path: Path) -> None:
    from infra.emulator.testing import run_emulator
    from services.contracts.topic_admin import apply_topics
    from services.gateway.app import create_app
    from services.gateway.bootstrap import build_gateway
    from services.gateway.emitter import EmitterConfig, EventEmitter
    from services.gateway.settings import GatewaySettings

    bootstrap = private_kafka.endpoint
    await apply_topics(bootstrap, "", specs=(CALLS, FEEDBACK), max_replication=1)
    emitter = EventEmitter(
        EmitterConfig(
            bootstrap=bootstrap,
            spool_dir=tmp_path / "spool",
            request_timeout_ms=3000,
            delivery_timeout_s=4,
            retry_backoff_s=0.5,
            max_backoff_s=2.0,
        )
    )

    async def no_router(_req):  # pass-through requests never ask the router
        raise AssertionError("router not used")

    async def status() -> dict:
        return {"loaded": True}

    with run_emulator(data_dir=data_dir) as emu:
        settings = GatewaySettings(catalog_path=emulator_catalog(tmp_path, emu.base_url))
        gw = build_gateway(settings, no_router, status, emitter=emitter)
        app = create_app(gw)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=30
        ) as c:

            async def call(i: int) -> tuple[str, float]:
                t0 = time.perf_counter()
                r = await c.post(
                    "/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": f"What is {i} + {i}?"}]},
                )
                assert r.status_code == 200, r.text
                return r.headers["x-switchyard-request-id"], time.perf_counter() - t0

            ids = [(await call(i))[0] for i in range(20)]
            assert await emitter.flush(30), "events were not delivered while the broker was up"
            assert emitter.sent == 20

            os.killpg(private_kafka.pid(), signal.SIGKILL)  # the broker dies mid-run
            during = [await call(i) for i in range(20, 50)]
            ids += [rid for rid, _ in during]
            slowest = max(t for _, t in during)
            assert slowest < 2.0, f"a request waited on Kafka ({slowest:.2f}s)"
            deadline = time.monotonic() + 30
            while emitter.spool.pending == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert emitter.spool.pending > 0, "nothing was spooled while the broker was down"

            await asyncio.to_thread(private_kafka.start)  # the broker comes back
            assert await emitter.flush(90), f"spool not drained: {emitter.spool.pending} left"
            await gw.stop()

    values = await asyncio.to_thread(consume_all, bootstrap, CALLS, "", len(ids), 60)
    counts = Counter(CallEvent.from_bytes(v).request_id for v in values)
    assert sorted(counts) == sorted(ids), f"{len(set(ids) - set(counts))} events lost"
    assert max(counts.values()) == 1, f"duplicates: {[k for k, n in counts.items() if n > 1][:5]}"
    assert len(values) == 50

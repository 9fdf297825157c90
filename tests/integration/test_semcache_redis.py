"""The semantic cache shared by two ingress replicas through a real redis-server: an answer admitted
in one is served by the other, a reject in one stops both, feedback reaching the other replica
still admits, and a replica that starts later loads the live entries."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator

import numpy as np
import pytest
from redis_server import IN_CI, RedisServer

from services.gateway.semcache import CacheConfig, SemanticCache, cache_namespace
from services.gateway.semcache_shared import SharedCacheStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PORT = 16391  # this test's own port
NS = cache_namespace("acme", "switchyard/auto", {"messages": []})
Q = "Which of the following is a mammal?\nA. Shark\nB. Whale\nC. Trout\nD. Eel\nAnswer:"


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(name="server")
def server_fixture(tmp_path):  # noqa: ANN001, ANN201
    if shutil.which("redis-server") is None:
        msg = "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        if IN_CI:
            pytest.fail(msg + " — CI requires it", pytrace=False)
        pytest.skip(msg)
    server = RedisServer(PORT, tmp_path, password="t3st-" + os.urandom(6).hex())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="replicas")
async def replicas_fixture(server: RedisServer) -> AsyncIterator[list[SharedCacheStore]]:
    stores = [
        SharedCacheStore.from_url(
            SemanticCache(CacheConfig(threshold=0.9)),
            server.url,
            password=server.password,
            prefix="t:semcache",
        )
        for _ in range(2)
    ]
    for s in stores:
        await s.bootstrap()
    yield stores
    for s in stores:
        await s.aclose()


async def settle(stores: list[SharedCacheStore]) -> None:
    """Let operations propagate (a remote confirm takes two hops: confirm, then admit)."""
    for _ in range(3):
        for s in stores:
            await s.sync()


async def test_admitted_in_one_replica_is_served_by_the_other(replicas: list[SharedCacheStore]) -> None:
    a, b = replicas
    a.cache.offer("r1", NS, "biology", Q, vec(1), {"content": "B"}, good=True)
    await settle(replicas)
    hit = b.cache.lookup(NS, "biology", "Please answer: " + Q, vec(1))
    assert hit is not None and hit.answer == {"content": "B"} and hit.source_request_id == "r1"

    # a reject in b stops both
    assert b.reject("r1")
    await settle(replicas)
    assert a.cache.lookup(NS, "biology", Q, vec(1)) is None
    assert b.cache.lookup(NS, "biology", Q, vec(1)) is None
    # and a late positive signal anywhere does not bring it back
    a.cache.offer("r1", NS, "biology", Q, vec(1), {"content": "B"}, good=True)
    await settle(replicas)
    assert b.cache.lookup(NS, "biology", Q, vec(1)) is None


async def test_feedback_reaching_the_other_replica_admits_a_pending_answer(
    replicas: list[SharedCacheStore],
) -> None:
    a, b = replicas
    a.cache.offer("r2", NS, "biology", Q, vec(2), {"content": "B"}, good=False)
    assert not b.confirm("r2")  # b does not hold it: asks the others
    await settle(replicas)
    assert a.cache.lookup(NS, "biology", Q, vec(2)) is not None
    assert b.cache.lookup(NS, "biology", Q, vec(2)) is not None


async def test_a_replica_starting_later_loads_live_entries(
    server: RedisServer, replicas: list[SharedCacheStore]
) -> None:
    a, _ = replicas
    a.cache.offer("r3", NS, "biology", Q, vec(3), {"content": "B"}, good=True)
    await a.flush()
    late = SharedCacheStore.from_url(
        SemanticCache(), server.url, password=server.password, prefix="t:semcache"
    )
    try:
        assert await late.bootstrap() == 1
        hit = late.cache.lookup(NS, "biology", Q + " Thanks", vec(3))
        assert hit is not None and hit.source_request_id == "r3"
    finally:
        await late.aclose()


async def test_replication_loops_carry_admits_and_rejects(replicas: list[SharedCacheStore]) -> None:
    """The production path: each replica's ``run()`` loop flushes and tails on its own."""
    a, b = replicas
    stop = asyncio.Event()
    for s in replicas:
        s.block_ms = 50
    tasks = [asyncio.create_task(s.run(stop)) for s in replicas]
    try:
        a.cache.offer("r4", NS, "biology", Q, vec(4), {"content": "B"}, good=True)
        assert await eventually(lambda: b.cache.lookup(NS, "biology", Q, vec(4)) is not None)
        b.reject("r4")
        assert await eventually(lambda: a.cache.lookup(NS, "biology", Q, vec(4)) is None)
        assert a.errors == b.errors == 0
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def eventually(check, timeout_s: float = 5.0) -> bool:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return False

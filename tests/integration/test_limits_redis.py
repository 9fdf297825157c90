"""Limits shared by ingress replicas, on a real redis-server: two independent limiters (two
replicas: separate clients, separate in-process fallbacks) hold the combined limit; the failed-auth
limit and the exploration budget too; when the store dies mid-test every request is still decided
(fail open to each replica's memory: never a 5xx, never a hang), the failure is counted and shown
without the password, and the shared counting resumes once a store answers again."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
from redis_server import RedisServer, redis_fixture  # noqa: F401 - the `redis` fixture

from services.catalog import load_catalog
from services.errors import RateLimited
from services.gateway.app import create_app
from services.gateway.bootstrap import build_gateway
from services.gateway.ratelimit import AuthFailureLimiter, LimitStore, RateLimiter, SharedBudget
from services.gateway.settings import GatewaySettings, hash_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY = "sk-limits-1"


def replica_store(server: RedisServer, **kw: Any) -> LimitStore:
    """What one ingress replica builds: its own client of the shared store."""
    return LimitStore(server.url, password=server.password, timeout_s=0.5, **kw)


async def admitted(limiters: list[RateLimiter], key: str, n: int) -> int:
    """Requests of ``key`` admitted out of ``n``, sent round-robin over the replicas."""
    ok = 0
    for i in range(n):
        try:
            await limiters[i % len(limiters)].check(key)
            ok += 1
        except RateLimited:
            pass
    return ok


async def test_two_replicas_sharing_the_store_hold_the_combined_limit(redis) -> None:
    # 5 requests per 50 s window (0.1/s, burst 5): the fleet admits 5, not 5 per replica
    shared = [RateLimiter(0.1, 5, replica_store(redis)) for _ in range(2)]
    assert await admitted(shared, "key-a", 12) == 5
    assert await admitted(shared, "key-b", 12) == 5  # per key
    with pytest.raises(RateLimited) as info:
        await shared[1].check("key-a")
    assert 1 <= int(info.value.headers["retry-after"]) <= 100
    assert all(lim.store.errors == 0 and lim.store.healthy for lim in shared)
    # the same two replicas counting in memory (the default) admit the limit each
    alone = [RateLimiter(0.1, 5, LimitStore()) for _ in range(2)]
    assert await admitted(alone, "key-a", 12) == 10


async def test_failed_authentications_and_budgets_are_the_fleets(redis) -> None:
    a, b = replica_store(redis), replica_store(redis)
    auth = [AuthFailureLimiter(3, a), AuthFailureLimiter(3, b)]
    await auth[0].failed("10.1.1.1")
    await auth[1].failed("10.1.1.1")
    await auth[0].blocked("10.1.1.1")  # 2 of 3 spent across the fleet
    await auth[1].failed("10.1.1.1")
    for replica in auth:
        with pytest.raises(RateLimited) as info:
            await replica.blocked("10.1.1.1")
        assert int(info.value.headers["retry-after"]) >= 1
    budgets = [SharedBudget(0.01, a), SharedBudget(0.01, b)]
    assert await budgets[0].admit("contracts", 0.004)
    assert await budgets[1].admit("contracts", 0.004)
    assert not await budgets[0].admit("contracts", 0.004)  # 0.012 > 0.01 across both replicas
    assert await budgets[1].admit("contracts", 0.002)


async def test_a_store_that_dies_fails_open_and_comes_back(redis, caplog) -> None:
    errors: list[int] = []
    stores = [replica_store(redis, retry_s=0.5, on_error=lambda: errors.append(1)) for _ in range(2)]
    fleet = [RateLimiter(0.1, 5, s) for s in stores]
    assert await admitted(fleet, "k", 4) == 4
    redis.stop()  # the store dies mid-traffic
    with caplog.at_level(logging.WARNING, logger="services.gateway.ratelimit"):
        t0 = time.monotonic()
        outcomes = await admitted(fleet, "k", 20)
        took = time.monotonic() - t0
    # every request was decided, quickly: each replica now enforces the limit alone (5 each)
    assert outcomes == 10 and took < 5
    assert len(errors) == 2  # one failed try per replica; then memory until retry_s
    for store in stores:
        status = store.status()
        assert status["mode"] == "in-process (fail-open)" and not status["healthy"]
        assert redis.password not in str(status) and status["store"] == redis.url
    assert redis.password not in caplog.text
    assert "limits are counted in this replica only" in caplog.text
    # a store answers again (a fresh, empty one, as after a restart): shared counting resumes
    redis.start()
    await asyncio.sleep(0.6)  # past retry_s
    assert await admitted(fleet, "k", 12) == 5
    assert all(s.healthy and s.status()["mode"] == "shared" for s in stores)


def gateway_replica(server: RedisServer, **settings: Any) -> tuple[Any, httpx.AsyncClient]:
    """One ingress replica's app (the real gateway wiring, no Ray): rate limits in the shared store."""
    s = GatewaySettings(
        api_key_hashes=[hash_key(KEY)],
        rate_limit_rps=0.1,
        rate_limit_burst=4,
        rate_limit_storage=server.url,
        rate_limit_storage_password=server.password,
        rate_limit_storage_timeout_s=0.5,
        rate_limit_storage_retry_s=60,
        events_enabled=False,
        explore_enabled=False,
        metrics_public=True,  # read after the key's limit is spent
        **settings,
    )

    async def route(_req: Any) -> Any:
        raise AssertionError("no request here is routed")

    async def status() -> dict[str, Any]:
        return {"loaded": True, "version": "test", "failed_swaps": 0}

    gw = build_gateway(s, route, status, catalog=load_catalog(), fleet_metrics=False)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gw)),
        base_url="http://gw",
        headers={"authorization": f"Bearer {KEY}"},
    )
    return gw, client


async def test_two_gateway_replicas_share_the_limit_and_outlive_the_store(redis) -> None:
    replicas = [gateway_replica(redis) for _ in range(2)]
    codes = [(await replicas[i % 2][1].get("/v1/models")).status_code for i in range(8)]
    assert codes.count(200) == 4 and codes.count(429) == 4  # 4 for the fleet, not 4 per replica
    ready = (await replicas[0][1].get("/readyz")).json()
    assert ready["status"] == "ok" and ready["rate_limits"]["mode"] == "shared"
    redis.stop()
    # the store is gone: requests are still answered (each replica's own limit: 4 more each),
    # never a 5xx; the failure shows in /readyz (without the password) and in /metrics
    codes = [(await replicas[i % 2][1].get("/v1/models")).status_code for i in range(10)]
    assert codes.count(200) == 8 and codes.count(429) == 2 and not any(c >= 500 for c in codes)
    for _, client in replicas:
        ready = (await client.get("/readyz")).json()
        assert ready["status"] == "degraded" and "rate-limit store" in ready["reason"]
        assert ready["rate_limits"]["mode"] == "in-process (fail-open)"
        assert redis.password not in str(ready)
        text = (await client.get("/metrics")).text
        # the operations in flight when it died (the key's limit and the source's failed-auth
        # check go together), then none until the retry
        assert "switchyard_rate_limit_store_errors_total 2.0" in text
        assert "switchyard_rate_limit_store_up 0.0" in text
        await client.aclose()

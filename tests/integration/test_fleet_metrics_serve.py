"""Metrics and limits of a gateway fleet, on real Ray Serve with TWO ingress replicas, the emulator
and a real redis-server: N requests read N in the metrics Ray exports (every replica's series,
summed, as Prometheus sums them), not one replica's share as each replica's own /metrics does; a
per-key limit holds for the fleet (limit L across two replicas, not 2 × L); and so does a key's
dollar budget and model allowlist (issue 20: both replicas refuse once the one budget is spent)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from gateway_stack import emulator_catalog, make_router
from prometheus_client.parser import text_string_to_metric_families
from redis_server import redis_fixture  # noqa: F401 - the `redis` fixture

from services.gateway.budgets import micro_usd
from services.gateway.settings import hash_key
from training.data import GPT4, MIXTRAL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

KEY_A, KEY_B, KEY_CACHE = "sk-fleet-a", "sk-fleet-b", "sk-fleet-cache"
LIMIT = 12  # requests per key per 600 s window, for the whole fleet
# a key with a daily budget of a few small calls (16 completion tokens of Mixtral: ~6 micro-USD
# each, reserving ~9) that may use Mixtral only
KEY_BUDGET, BUDGET_USD = "sk-fleet-budget", 0.00002
BUDGET_KEY_ID = hash_key(KEY_BUDGET)[:12]


@pytest.fixture(scope="module")
def emulator(data_dir):
    from infra.emulator.testing import run_emulator

    with run_emulator(data_dir=data_dir, chunk_words=4) as emu:
        yield emu


@pytest.fixture(scope="module")
def router(data_dir) -> Path:
    return make_router("mlp", Path(__file__).resolve().parents[2] / ".state" / "gateway-test" / "router-mlp")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fleet_series(name: str, **match: str) -> dict[str, float]:
    """``name``'s value per replica, from the metrics agent of every Ray node (what a Prometheus
    scraping every Ray pod's metrics port gets)."""
    import ray

    out: dict[str, float] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        text = httpx.get(url, timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
                    replica = sample.labels["replica"]
                    out[replica] = out.get(replica, 0.0) + sample.value
    return out


def wait_for_sum(name: str, expected: float, timeout_s: float = 120, **match: str) -> dict[str, float]:
    """Poll Ray's export (every few seconds) until the replicas' values add up to ``expected``."""
    deadline, series = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        series = fleet_series(name, **match)
        if sum(series.values()) == expected:
            return series
        time.sleep(2)
    raise AssertionError(f"{name}{match}: per replica {series}, expected a sum of {expected}")


def post(url: str, key: str, model: str = MIXTRAL, **extra) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            **extra,
        },
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def ask(url: str, key: str) -> int:
    r = post(url, key)
    assert r.status_code in (200, 429), r.text
    return r.status_code


def spend_the_budget(url: str, redis) -> None:
    """The budgeted key: a model outside its allowlist is a 403; calls are answered until the
    budget is spent, then every call is a 429 ``budget_exceeded`` from both replicas; the spend the
    store recorded is what the calls cost, within the budget. At most LIMIT calls (its rate limit)."""
    import redis as redis_client

    r = post(url, KEY_BUDGET, GPT4)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", r.text
    costs: list[float] = []
    while True:  # one at a time until the first refusal
        r = post(url, KEY_BUDGET, max_tokens=16)
        if r.status_code != 200:
            break
        costs.append(float(r.headers["x-switchyard-cost-usd"]))
        assert len(costs) < 6, costs
    refusals = [r]
    with ThreadPoolExecutor(8) as pool:  # the rest at once: spread over both replicas
        refusals += pool.map(lambda _: post(url, KEY_BUDGET, max_tokens=16), range(LIMIT - 2 - len(costs)))
    for r in refusals:
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["type"] == "insufficient_quota" and err["code"] == "budget_exceeded", err
        assert f"daily budget of API key {BUDGET_KEY_ID}" in err["message"] and "resets at" in err["message"]
        assert int(r.headers["retry-after"]) >= 1
    assert costs and sum(costs) <= BUDGET_USD
    per_replica = wait_for_sum(
        "ray_switchyard_budget_rejections_total", len(refusals), deployment="ChatIngress", limit="usd_per_day"
    )
    assert len(per_replica) == 2 and all(v > 0 for v in per_replica.values()), per_replica
    # the store's counter: every answered call's actual cost (micro-USD), reservations settled
    client = redis_client.Redis.from_url(redis.url, password=redis.password)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    key = f"switchyard:budget/key/{BUDGET_KEY_ID}/usd_per_day/{day}"
    deadline, stored = time.monotonic() + 10, None
    while time.monotonic() < deadline and stored != sum(map(micro_usd, costs)):
        stored = int(client.get(key) or 0)
        time.sleep(0.2)
    assert stored == sum(map(micro_usd, costs)) <= micro_usd(BUDGET_USD), (stored, costs)


def share_the_cache(url: str, repeats: int = 10) -> None:
    """A strong-tier answer stored by the replica that answered it is served by both replicas:
    every repeat is a hit, and the hits are counted on two replicas."""
    question = {"messages": [{"role": "user", "content": "Which planet of the solar system is the largest?"}]}
    first = post(url, KEY_CACHE, GPT4, **question)
    assert first.status_code == 200 and "x-switchyard-cache" not in first.headers, first.text
    time.sleep(3)  # the admission reaches the other replica through the store's stream (~1 s)
    for _ in range(repeats):
        r = post(url, KEY_CACHE, GPT4, **question)
        assert r.status_code == 200 and r.headers.get("x-switchyard-cache") == "hit", r.headers
        assert r.headers["x-switchyard-cache-source"] == first.headers["x-switchyard-request-id"]
        assert r.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    per_replica = wait_for_sum(
        "ray_switchyard_cache_lookups_total", repeats, deployment="ChatIngress", result="hit_exact"
    )
    assert len(per_replica) == 2 and all(v > 0 for v in per_replica.values()), per_replica


def test_two_ingress_replicas_export_fleet_wide_metrics_and_share_one_limit(
    emulator, router, redis, tmp_path
) -> None:
    import ray
    from ray import serve

    from services.gateway.deployments import GatewayArgs
    from services.gateway.local import deploy, start_ray

    args = GatewayArgs(
        router_ref=str(router),
        catalog_path=emulator_catalog(tmp_path, emulator.base_url),
        ingress_replicas=2,
        spool_dir=tmp_path / "spool",
        settings={
            "api_keys": [KEY_A, KEY_B, KEY_BUDGET, KEY_CACHE],
            # the semantic cache, shared by both replicas through the same redis (semcache_shared.py)
            "cache_enabled": True,
            "budgets": {"keys": {BUDGET_KEY_ID: {"usd_per_day": BUDGET_USD, "models": [MIXTRAL]}}},
            "events_enabled": False,
            "explore_enabled": False,
            "metrics_public": True,  # each replica's own /metrics, read with both keys spent
            "ingress_num_cpus": 0.25,
            "router_num_cpus": 0.25,
            "rate_limit_rps": LIMIT / 600,
            "rate_limit_burst": LIMIT,
            "rate_limit_storage": redis.url,
            "rate_limit_storage_password": redis.password,
            "rate_limit_storage_timeout_s": 1.0,
        },
    )
    start_ray(args.gateway_settings(), num_cpus=2)
    try:
        url = deploy(args, host="127.0.0.1", port=_free_port(), wait_ready_s=300)
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        assert ready["rate_limits"]["mode"] == "shared" and redis.password not in str(ready)

        # key A: exactly the limit, spread over both replicas by Serve; key B: more than the limit
        assert [ask(url, KEY_A) for _ in range(LIMIT)] == [200] * LIMIT
        assert ask(url, KEY_A) == 429  # one replica alone would still have had LIMIT - its share
        codes_b = [ask(url, KEY_B) for _ in range(LIMIT + 8)]
        assert codes_b.count(200) == LIMIT and codes_b.count(429) == 8  # the fleet's limit, not 2 × it

        answered = 2 * LIMIT
        per_replica = wait_for_sum(
            "ray_switchyard_requests_total", answered, deployment="ChatIngress", mode="passthrough"
        )
        assert len(per_replica) == 2 and all(v > 0 for v in per_replica.values()), per_replica
        wait_for_sum("ray_switchyard_errors_total", 9, deployment="ChatIngress", status="429")
        latency = fleet_series("ray_switchyard_request_latency_seconds_count", deployment="ChatIngress")
        assert sum(latency.values()) == answered
        # the same numbers through one replica's own /metrics are that replica's share only
        for _ in range(4):
            own = httpx.get(f"{url}/metrics", timeout=10).text
            local = sum(
                s.value
                for f in text_string_to_metric_families(own)
                for s in f.samples
                if s.name == "switchyard_requests_total"
            )
            assert 0 < local < answered and local in per_replica.values()
        spend_the_budget(url, redis)  # its calls would change the sums above
        share_the_cache(url)
    finally:
        serve.shutdown()
        ray.shutdown()

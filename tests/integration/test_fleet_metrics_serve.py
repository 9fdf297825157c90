"""Metrics and limits of a gateway fleet, on real Ray Serve with TWO ingress replicas, the emulator
and a real redis-server: N requests read N in the metrics Ray exports (every replica's series,
summed, as Prometheus sums them), not one replica's share as each replica's own /metrics does; and a
per-key limit holds for the fleet (limit L across two replicas, not 2 × L)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from gateway_stack import emulator_catalog, make_router
from prometheus_client.parser import text_string_to_metric_families
from redis_server import redis_fixture  # noqa: F401 - the `redis` fixture

from training.data import MIXTRAL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

KEY_A, KEY_B = "sk-fleet-a", "sk-fleet-b"
LIMIT = 12  # requests per key per 600 s window, for the whole fleet


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


def ask(url: str, key: str) -> int:
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": MIXTRAL, "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code in (200, 429), r.text
    return r.status_code


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
            "api_keys": [KEY_A, KEY_B],
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
    finally:
        serve.shutdown()
        ray.shutdown()

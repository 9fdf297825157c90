"""The gateway's metrics in a fleet (services/gateway/metrics.py) without Ray: every update reaches
both the replica's own registry and its Ray twin (here a recorder standing in for
``ray.serve.metrics``, which needs a running replica; tests/integration/test_fleet_metrics_serve.py
runs the real one), zero increments never reach Ray (its counters refuse them), and the names
Prometheus gets from Ray are the dashboard's."""

from __future__ import annotations

from typing import Any

from services.gateway.metrics import FLEET_PREFIX, FleetMetric, GatewayMetrics, fleet_names
from services.providers.breaker import BreakerState


class Recorder:
    """What a ``ray.serve.metrics`` metric is asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str] | None]] = []

    def inc(self, value: float, tags: dict[str, Any] | None = None) -> None:
        self.calls.append(("inc", value, tags))

    def set(self, value: float, tags: dict[str, Any] | None = None) -> None:
        self.calls.append(("set", value, tags))

    def observe(self, value: float, tags: dict[str, Any] | None = None) -> None:
        self.calls.append(("observe", value, tags))


def test_every_update_reaches_the_registry_and_the_twin_with_its_labels() -> None:
    m = GatewayMetrics()
    twins = {name: Recorder() for name in ("requests", "cost", "latency", "breaker_state", "router_latency")}
    for name, twin in twins.items():
        setattr(m, name, FleetMetric(getattr(m, name), twin))
    m.requests.labels(mode="route", task="t", status="ok").inc()
    m.cost.labels(model="a", tier="cheap", task="t").inc(0.0)  # a free call: Ray refuses 0
    m.cost.labels(model="a", tier="cheap", task="t").inc(0.25)
    m.latency.labels(mode="route", stream="false").observe(0.2)
    m.router_latency.observe(0.01)
    m.set_breaker("up", BreakerState.OPEN)
    r = m.registry
    ok = {"mode": "route", "task": "t", "status": "ok"}
    assert r.get_sample_value("switchyard_requests_total", ok) == 1
    cheap = {"model": "a", "tier": "cheap", "task": "t"}
    assert r.get_sample_value("switchyard_cost_usd_total", cheap) == 0.25
    assert r.get_sample_value("switchyard_router_latency_seconds_count") == 1
    assert twins["requests"].calls == [("inc", 1.0, {"mode": "route", "task": "t", "status": "ok"})]
    assert twins["cost"].calls == [("inc", 0.25, {"model": "a", "tier": "cheap", "task": "t"})]
    assert twins["latency"].calls == [("observe", 0.2, {"mode": "route", "stream": "false"})]
    assert twins["router_latency"].calls == [("observe", 0.01, None)]
    assert twins["breaker_state"].calls == [("set", 2, {"upstream": "up"})]


def test_outside_a_serve_replica_the_metrics_are_plain_prometheus_ones() -> None:
    from prometheus_client import Counter

    m = GatewayMetrics()
    assert not m.fleet and isinstance(m.requests, Counter)


def test_fleet_names_are_what_ray_exports() -> None:
    names = fleet_names(GatewayMetrics())
    assert "ray_switchyard_requests_total" in names
    assert "ray_switchyard_request_latency_seconds_bucket" in names
    assert "ray_switchyard_breaker_state" in names
    assert "ray_switchyard_rate_limit_store_errors_total" in names
    assert all(n.startswith(FLEET_PREFIX + "switchyard_") for n in names)
    assert not any(n.endswith("_created") for n in names)  # Ray exports no _created series

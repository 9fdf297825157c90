"""Prometheus metrics of the gateway, on a registry owned by one ingress replica."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.providers.breaker import STATE_VALUE, BreakerState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    """Requests, errors, latency, tokens, cost, route shares, fallbacks, breakers, emitter, exploration."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "switchyard_requests", "Chat requests by outcome.", ["mode", "task", "status"], registry=r
        )
        self.errors = Counter(
            "switchyard_errors", "Error responses by HTTP status and code.", ["status", "code"], registry=r
        )
        self.latency = Histogram(
            "switchyard_request_latency_seconds",
            "End-to-end request latency.",
            ["mode", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.router_latency = Histogram(
            "switchyard_router_latency_seconds",
            "Time to get router scores.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "switchyard_upstream_latency_seconds",
            "Latency of answered upstream calls.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "switchyard_tokens",
            "Tokens by model, tier, task and kind.",
            ["model", "tier", "task", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "switchyard_cost_usd",
            "Upstream cost in USD by model, tier and task.",
            ["model", "tier", "task"],
            registry=r,
        )
        self.routes = Counter(
            "switchyard_routes",
            "Chosen model per request (route shares); source: router, cheap (the in-ingress cheap "
            "router), prior (the task's learned decision mix), default (the catalog default), "
            "passthrough (a concrete model was asked for).",
            ["model", "tier", "task", "mode", "source"],
            registry=r,
        )
        self.fallbacks = Counter(
            "switchyard_fallbacks",
            "Requests answered by another model than first chosen.",
            ["from_model", "to_model"],
            registry=r,
        )
        self.escalations = Counter("switchyard_escalations", "Cascade escalations.", ["task"], registry=r)
        self.router_fallbacks = Counter(
            "switchyard_router_fallbacks",
            "Routed requests whose better routing source failed or was late, by the source that "
            "answered instead (cheap, prior, default): degraded decisions.",
            ["source"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "switchyard_breaker_state",
            "Breaker state per upstream: 0 closed, 1 half-open, 2 open.",
            ["upstream"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "switchyard_emitter_queue_depth", "Events waiting in the emitter queue.", registry=r
        )
        self.spool_records = Gauge(
            "switchyard_emitter_spool_records", "Events spooled while Kafka is away.", registry=r
        )
        self.spool_bytes = Gauge(
            "switchyard_emitter_spool_bytes", "Size of the emitter spool files.", registry=r
        )
        self.events_sent = Gauge(
            "switchyard_emitter_events_sent", "Events acknowledged by Kafka since start.", registry=r
        )
        self.explore_calls = Counter(
            "switchyard_explore_calls",
            "Shadow calls of budgeted exploration by task, shadow model and outcome (accepted or "
            "rejected by the judge, unjudged, error: the shadow upstream failed, crashed).",
            ["task", "model", "outcome"],
            registry=r,
        )
        self.explore_spend = Counter(
            "switchyard_explore_spend_usd",
            "Exploration spend in USD (shadow calls and their judge calls) by task; not in "
            "switchyard_cost_usd.",
            ["task"],
            registry=r,
        )
        self.explore_skipped = Counter(
            "switchyard_explore_skipped",
            "Routed requests not shadowed, by reason: not_candidate, no_cheaper, share, busy, budget.",
            ["task", "reason"],
            registry=r,
        )
        self.router_info = Gauge(
            "switchyard_router_info", "The router version serving (value 1).", ["version"], registry=r
        )

    def set_breaker(self, upstream: str, state: BreakerState) -> None:
        self.breaker_state.labels(upstream=upstream).set(STATE_VALUE[state])

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

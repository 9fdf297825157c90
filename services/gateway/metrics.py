"""Prometheus metrics of the gateway.

Every metric lives on a registry owned by one ingress replica (its ``/metrics``: that replica's
share). In a Ray Serve replica (``fleet=True``) each one also has a ``ray.serve.metrics`` twin of
the same name: Ray's metrics agent on every node exports the twins of every replica on that node as
``ray_<name>`` (counters ``ray_<name>_total``) with the replica's ``deployment``/``replica``/
``application`` tags, so Prometheus scraping every Ray pod's metrics port and summing over replicas
gets fleet-wide numbers however far the ingress autoscales (a replica that goes away takes its own
series with it; ``rate()`` never sees another replica's counter as a reset). docs/k8s.md, "Metrics
and limits across replicas".
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.providers.breaker import STATE_VALUE, BreakerState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Ray's metrics agent prefixes every application metric with this (and counters end in _total)
FLEET_PREFIX = "ray_"
# the task label of a task the gateway does not know, and the most distinct task labels
OTHER_TASK = "other"
MAX_TASK_LABELS = 1000


class FleetMetric:
    """A prometheus_client metric (or one labelled child of it) and its ``ray.serve.metrics`` twin:
    every update goes to both. Used only inside Serve replicas."""

    __slots__ = ("local", "twin", "tags")

    def __init__(self, local: Any, twin: Any, tags: dict[str, str] | None = None):
        self.local = local
        self.twin = twin
        self.tags = tags

    def labels(self, **labels: str) -> FleetMetric:
        return FleetMetric(self.local.labels(**labels), self.twin, labels)

    def inc(self, amount: float = 1.0) -> None:
        self.local.inc(amount)
        if amount > 0:  # Ray's counters refuse 0 (a free call's cost, an empty answer's tokens)
            self.twin.inc(amount, tags=self.tags)

    def set(self, value: float) -> None:
        self.local.set(value)
        self.twin.set(value, tags=self.tags)

    def observe(self, value: float) -> None:
        self.local.observe(value)
        self.twin.observe(value, tags=self.tags)


class GatewayMetrics:
    """Requests, errors, latency, tokens, cost, route shares, fallbacks, breakers, emitter, exploration."""

    def __init__(self, registry: CollectorRegistry | None = None, fleet: bool = False):
        self.registry = registry or CollectorRegistry()
        self.fleet = fleet  # also export through Ray's metrics agent (in a Serve replica)
        self._tasks: set[str] = {"default"}
        self._router_version: str | None = None
        self._specs: dict[int, tuple[str, str, tuple[str, ...]]] = {}
        r = self.registry
        self.requests = self._new(
            Counter,
            "switchyard_requests",
            "Chat requests by outcome.",
            ["mode", "task", "status"],
            registry=r,
        )
        self.errors = self._new(
            Counter,
            "switchyard_errors",
            "Error responses by HTTP status and code.",
            ["status", "code"],
            registry=r,
        )
        self.latency = self._new(
            Histogram,
            "switchyard_request_latency_seconds",
            "End-to-end request latency.",
            ["mode", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.router_latency = self._new(
            Histogram,
            "switchyard_router_latency_seconds",
            "Time to get router scores.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = self._new(
            Histogram,
            "switchyard_upstream_latency_seconds",
            "Latency of answered upstream calls.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = self._new(
            Counter,
            "switchyard_tokens",
            "Tokens by model, tier, task and kind.",
            ["model", "tier", "task", "kind"],
            registry=r,
        )
        self.cached_tokens = self._new(
            Counter,
            "switchyard_cached_tokens",
            "Prompt tokens served from the upstreams' prompt caches by model, tier and task; kind: "
            "read (billed at the catalog's cached_input rate) or write (Anthropic cache creation, at "
            'cache_write). Part of switchyard_tokens{kind="prompt"}, not on top of it.',
            ["model", "tier", "task", "kind"],
            registry=r,
        )
        self.cost = self._new(
            Counter,
            "switchyard_cost_usd",
            "Upstream cost in USD by model, tier and task.",
            ["model", "tier", "task"],
            registry=r,
        )
        self.routes = self._new(
            Counter,
            "switchyard_routes",
            "Chosen model per request (route shares); source: router, cheap (the in-ingress cheap "
            "router), prior (the task's learned decision mix), default (the catalog default), "
            "passthrough (a concrete model was asked for).",
            ["model", "tier", "task", "mode", "source"],
            registry=r,
        )
        self.fallbacks = self._new(
            Counter,
            "switchyard_fallbacks",
            "Requests answered by another model than first chosen.",
            ["from_model", "to_model"],
            registry=r,
        )
        self.escalations = self._new(
            Counter, "switchyard_escalations", "Cascade escalations.", ["task"], registry=r
        )
        # the semantic cache (docs/cache.md): lookups by result, what hits saved, what it holds
        self.cache_lookups = self._new(
            Counter,
            "switchyard_cache_lookups",
            "Semantic cache lookups by result: hit_exact, hit_semantic, miss, bypass (opted out, "
            "switched off for the task, or a request the cache does not take).",
            ["task", "result"],
            registry=r,
        )
        self.cache_saved = self._new(
            Counter,
            "switchyard_cache_saved_usd",
            "Upstream cost the cache's hits did not spend (USD; each hit's source call's cost).",
            ["task"],
            registry=r,
        )
        self.cache_entries = self._new(
            Gauge, "switchyard_cache_entries", "Answers this replica's semantic cache can serve.", registry=r
        )
        self.router_fallbacks = self._new(
            Counter,
            "switchyard_router_fallbacks",
            "Routed requests whose better routing source failed or was late, by the source that "
            "answered instead (cheap, prior, default): degraded decisions.",
            ["source"],
            registry=r,
        )
        self.breaker_state = self._new(
            Gauge,
            "switchyard_breaker_state",
            "Breaker state per upstream: 0 closed, 1 half-open, 2 open.",
            ["upstream"],
            registry=r,
        )
        self.queue_depth = self._new(
            Gauge, "switchyard_emitter_queue_depth", "Events waiting in the emitter queue.", registry=r
        )
        self.spool_records = self._new(
            Gauge, "switchyard_emitter_spool_records", "Events spooled while Kafka is away.", registry=r
        )
        self.spool_bytes = self._new(
            Gauge, "switchyard_emitter_spool_bytes", "Size of the emitter spool files.", registry=r
        )
        self.events_sent = self._new(
            Gauge, "switchyard_emitter_events_sent", "Events acknowledged by Kafka since start.", registry=r
        )
        self.explore_calls = self._new(
            Counter,
            "switchyard_explore_calls",
            "Shadow calls of budgeted exploration by task, shadow model and outcome (accepted or "
            "rejected by the judge, unjudged, error: the shadow upstream failed, crashed).",
            ["task", "model", "outcome"],
            registry=r,
        )
        self.explore_spend = self._new(
            Counter,
            "switchyard_explore_spend_usd",
            "Exploration spend in USD (shadow calls and their judge calls) by task; not in "
            "switchyard_cost_usd.",
            ["task"],
            registry=r,
        )
        self.explore_skipped = self._new(
            Counter,
            "switchyard_explore_skipped",
            "Routed requests not shadowed, by reason: not_candidate, no_cheaper, share, busy, budget.",
            ["task", "reason"],
            registry=r,
        )
        self.router_info = self._new(
            Gauge, "switchyard_router_info", "The router version serving (value 1).", ["version"], registry=r
        )
        self.rate_limit_store_errors = self._new(
            Counter,
            "switchyard_rate_limit_store_errors",
            "Operations on the shared rate-limit store that failed or timed out; each one was counted "
            "in the replica's own memory instead (fail open).",
            registry=r,
        )
        self.rate_limit_store_up = self._new(
            Gauge,
            "switchyard_rate_limit_store_up",
            "1 while this replica counts limits in the configured store (the shared one, or memory:// "
            "when that is the setting), 0 while it fails open to its own memory.",
            registry=r,
        )
        self.budget_rejections = self._new(
            Counter,
            "switchyard_budget_rejections",
            "Requests refused by a budget or allowlist (services.gateway.budgets) by scope (key, tenant) "
            "and limit: usd_per_day, usd_per_month (429 budget_exceeded), tokens_per_minute (429 "
            "rate_limit_exceeded), models (403 model_not_allowed).",
            ["scope", "limit"],
            registry=r,
        )
        if fleet:
            self._twin_all()

    def _new(self, kind: type, name: str, doc: str, labels: Any = (), **kw: Any) -> Any:
        """A prometheus_client metric, its name, help and label names kept for its twin."""
        metric = kind(name, doc, labels, **kw)
        self._specs[id(metric)] = (name, doc, tuple(labels))
        return metric

    def _twin_all(self) -> None:
        """Give every metric its ``ray.serve.metrics`` twin (same name, labels, buckets)."""
        from ray.serve import metrics as serve_metrics

        for attr, metric in list(vars(self).items()):
            if not isinstance(metric, Counter | Gauge | Histogram):
                continue
            name, doc, labels = self._specs[id(metric)]
            if isinstance(metric, Counter):
                twin = serve_metrics.Counter(name, description=doc, tag_keys=labels)
            elif isinstance(metric, Gauge):
                twin = serve_metrics.Gauge(name, description=doc, tag_keys=labels)
            else:
                twin = serve_metrics.Histogram(
                    name, description=doc, boundaries=list(LATENCY_BUCKETS), tag_keys=labels
                )
            setattr(self, attr, FleetMetric(metric, twin))

    # -- bounded labels --------------------------------------------------------------------------

    def know_tasks(self, tasks: Any) -> None:
        """Tasks that get their own label (the catalog's, the configured ones, the serving router's
        vocabulary); at most :data:`MAX_TASK_LABELS`."""
        for t in tasks:
            if len(self._tasks) >= MAX_TASK_LABELS:
                break
            self._tasks.add(str(t))

    def task_label(self, task: str) -> str:
        """The ``task`` label of a request: a client names any task it likes, so a task the gateway
        does not know is ``other`` (each label value is a series in every scrape, forever)."""
        return task if task in self._tasks else OTHER_TASK

    def serving(self, version: str | None) -> None:
        """``switchyard_router_info{version}``: 1 for the version that routed the last request, 0 for
        the one before (a swap shows as the step from one series to the other)."""
        if not version or version == self._router_version:
            return
        if self._router_version is not None:
            self.router_info.labels(version=self._router_version).set(0)
        self.router_info.labels(version=version).set(1)
        self._router_version = version

    def observe_cache(self, model: str, tier: str, task: str, cached: int, written: int) -> None:
        """``switchyard_cached_tokens``: one answered attempt's cache reads and writes."""
        for kind, n in (("read", cached), ("write", written)):
            if n:
                self.cached_tokens.labels(model=model, tier=tier, task=task, kind=kind).inc(n)

    def set_breaker(self, upstream: str, state: BreakerState) -> None:
        self.breaker_state.labels(upstream=upstream).set(STATE_VALUE[state])

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


def fleet_names(metrics: GatewayMetrics) -> set[str]:
    """The series names Ray exports for the twins of ``metrics`` (what Prometheus sees when it
    scrapes the Ray pods)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        FLEET_PREFIX + family.name + s for family in metrics.registry.collect() for s in suffixes[family.type]
    }

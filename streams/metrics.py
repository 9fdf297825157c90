"""The worker's Prometheus metrics (served on ``/metrics`` by :mod:`streams.views`)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class StreamMetrics:
    """The worker's Prometheus metrics, in their own registry (one per app)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "switchyard_streams_"
        self.events = Counter(p + "events_total", "Records consumed, by topic.", ["topic"], registry=r)
        self.dead_letters = Counter(
            p + "dead_letters_total", "Records sent to the dead-letter topic.", ["topic"], registry=r
        )
        self.outcomes = Counter(p + "outcomes_total", "Outcomes emitted by the join.", registry=r)
        self.cache_hits = Counter(
            p + "cache_hits_total",
            "Graded semantic-cache hits: ok, or false (the served answer was not acceptable).",
            ["result"],
            registry=r,
        )
        self.duplicates = Counter(
            p + "join_duplicates_total", "Redelivered calls and duplicate feedback.", registry=r
        )
        self.expired = Counter(
            p + "join_expired_total", "Calls whose feedback never came within the TTL.", registry=r
        )
        self.alerts = Counter(p + "alerts_total", "Alerts emitted.", ["detector", "status"], registry=r)
        self.notices = Counter(
            p + "notices_total",
            "Informational notices (savings opportunities): on the alerts topic, never paged.",
            ["detector", "status"],
            registry=r,
        )
        self.webhook_sent = Counter(
            p + "webhook_deliveries_total", "Alerts delivered to on-call.", registry=r
        )
        self.webhook_failures = Counter(p + "webhook_failures_total", "Alerts on-call never got.", registry=r)
        self.hard_queries = Counter(p + "hard_queries_total", "Hard queries mined.", ["reason"], registry=r)
        self.errors = Counter(
            p + "processing_errors_total", "Batches a stage failed on.", ["stage"], registry=r
        )
        self.retrain = Counter(p + "retrain_requests_total", "Retrain requests emitted.", registry=r)
        self.lag = Gauge(
            p + "consumer_lag", "Records behind the high-water mark.", ["topic", "partition"], registry=r
        )
        self.rate = Gauge(p + "events_per_second", "Records consumed per second (last interval).", registry=r)
        self.join_entries = Gauge(p + "join_entries", "Entries in the local join table.", registry=r)
        self._last = (time.monotonic(), 0.0)
        self._children: dict[str, Any] = {}

    def consumed(self, topic: str, n: int = 1) -> None:
        """Count ``n`` consumed records (label children cached: this runs for every batch)."""
        if n <= 0:
            return
        child = self._children.get(topic)
        if child is None:
            child = self._children[topic] = self.events.labels(topic=topic)
        child.inc(n)

    def total_events(self) -> float:
        return sum(s.value for m in self.events.collect() for s in m.samples if s.name.endswith("_total"))

    def tick(self) -> float:
        """Update the events/s gauge from the counter; return the rate."""
        now, total = time.monotonic(), self.total_events()
        t0, n0 = self._last
        rate = (total - n0) / (now - t0) if now > t0 else 0.0
        self._last = (now, total)
        self.rate.set(rate)
        return rate

    def set_lag(self, lag: dict[Any, int]) -> None:
        """Set the consumer-lag gauge from ``{TopicPartition: records behind}``."""
        for tp, behind in lag.items():
            self.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(behind)

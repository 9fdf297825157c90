"""The worker's web views (``/metrics``, ``/stats/``, ``/progress/``) and the timer that keeps the
gauges ``/metrics`` serves up to date (events/s, consumer lag)."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import generate_latest

from . import eventloop, windows
from .fastpaths.lag import LagReader
from .wiring import Wiring


def stats_snapshot(wiring: Wiring) -> dict[str, Any]:
    """Per-task numbers (current window, all-time, events fed to the quality detectors), firing
    alerts and join counters."""
    out: dict[str, Any] = {"tasks": {}, "firing": wiring.monitor.firing(), "join": vars(wiring.joiner.stats)}
    window, totals, detectors = wiring.tables["window"], wiring.tables["totals"], wiring.tables["detectors"]
    for task in list(totals.keys()):
        quality = (detectors.get(task) or {}).get("quality") or {}
        out["tasks"][task] = {
            "window": windows.summarise(window[task].value()),
            "total": windows.summarise(totals.get(task)),
            # outcomes the quality detectors were fed, by model (each exactly once, replays skipped)
            "detector_events": {model: st.get("n", 0) for model, st in quality.items()},
        }
    return out


def register(app: faust.App, w: Wiring) -> None:
    """Add the views and the observe timer to ``app``."""
    metrics, totals_table = w.metrics, w.tables["totals"]
    lag = LagReader(w.fast is not None and w.fast.lag)

    @app.timer(5.0)
    async def observe() -> None:
        metrics.tick()
        metrics.set_lag(lag.read(app.consumer))

    @app.page("/metrics")
    async def metrics_view(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    @app.page("/stats/")
    async def stats_view(self: Any, request: Any) -> Any:
        return self.json(stats_snapshot(w))

    @app.page("/progress/")
    async def progress_view(self: Any, request: Any) -> Any:
        # Cheap to poll (the benchmark does, 4 times a second): outcomes in the all-time tables.
        events = sum((agg or {}).get("n", 0) for agg in totals_table.values())
        return self.json(
            {
                "events": events,
                "join_inputs": w.join_inputs,
                "warm": w.warm,
                "event_loop": eventloop.running(),
            }
        )

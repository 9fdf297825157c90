"""Agent ``input-drift``: router features per task -> evidently data-drift checks and alerts.

Consumes ``<app_id>-call-features`` (one record per task and join batch, by column) event by
event; when a task's check is due it runs in a thread and its result is applied on the loop.
The detector state that must survive a restart (reference window, firing) lives in the
``input-drift`` table (see :class:`streams.drift.TaskMonitor`). A task imports evidently at
start, off the loop.
"""

from __future__ import annotations

import asyncio
import importlib

import faust

from ..fastpaths.current_event import bind
from ..wiring import Wiring


def register(app: faust.App, w: Wiring) -> None:
    """Add the ``input-drift`` agent and the evidently warm-up task to ``app``."""
    settings, monitor = w.settings, w.monitor
    rebind = w.fast is not None and w.fast.bind

    @app.agent(w.topics["features"], name="input-drift")
    async def input_drift_agent(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            if not settings.input_drift_enabled:
                continue
            task = ev.key.decode() if isinstance(ev.key, bytes) else str(ev.key)
            try:
                due = monitor.add_features(task, ev.value)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:  # not a features record
                await w.dead_letter(ev, exc, "input-drift")
                continue
            if due:
                result = await asyncio.to_thread(monitor.run_input_check, task)
                if rebind:
                    bind(ev)  # per-event iteration already made it current; kept as before
                await w.publish(monitor.apply_input_check(task, result))

    @app.task
    async def warm_up() -> None:
        # evidently takes seconds to import: do it off the loop at start, not at the first alert.
        await asyncio.to_thread(importlib.import_module, "evidently.presets")
        w.warm = True

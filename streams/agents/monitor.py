"""Agent ``monitor``: per-task outcome batches -> window and all-time tables, quality and
calibration drift, alerts and retrain requests.

Consumes ``<app_id>-task-outcomes`` (one record per task and join batch, keyed by task). With the
``bind`` fast path it takes batches of records and writes each task's table entries under the
last record of that task (its partition owns them); without it, record by record, where Faust
sets the current event itself.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from services.contracts import OutcomeEvent

from .. import windows
from ..codecs import decode_outcomes
from ..fastpaths.current_event import bind
from ..wiring import Wiring

log = logging.getLogger(__name__)


def register(app: faust.App, w: Wiring) -> None:
    """Add the ``monitor`` agent to ``app``."""
    settings, metrics, monitor, cheap_tier = w.settings, w.metrics, w.monitor, w.cheap_tier
    window_table, totals_table = w.tables["window"], w.tables["totals"]
    task_outcomes_t = w.topics["task_outcomes"]
    task_outcomes_name = task_outcomes_t.get_topic_name()
    batched = w.fast is not None and w.fast.bind

    async def process(events: list[Any]) -> None:
        by_task: dict[str, tuple[list[OutcomeEvent], Any]] = {}
        metrics.consumed(task_outcomes_name, len(events))
        for ev in events:
            outs, bad = decode_outcomes(ev.value)
            for raw, exc in bad:
                await w.dead_letter(ev, exc, "monitor", raw)
            for o in outs:
                batch = by_task.setdefault(o.task, ([], ev))
                batch[0].append(o)
                by_task[o.task] = (batch[0], ev)
        for task, (outs, ev) in by_task.items():
            if batched:
                bind(ev)  # the last event of this task: its partition owns the task's table entries
            window_table[task] = windows.add_outcomes(window_table[task].value(), outs, cheap_tier)
            totals_table[task] = windows.add_outcomes(totals_table.get(task), outs, cheap_tier)
            try:
                result = monitor.on_outcomes(task, outs)
            except Exception:  # a detector bug must not stop the other tasks or the worker
                metrics.errors.labels(stage="monitor").inc()
                log.exception("monitor failed on a batch of task %s (%d outcomes)", task, len(outs))
                continue
            await w.publish(result)

    @app.agent(task_outcomes_t, name="monitor")
    async def monitor_agent(stream: faust.StreamT) -> None:
        if batched:
            async for events in stream.take_events(settings.batch_size, settings.batch_within_s):
                await process(events)
        else:
            async for ev in stream.events():
                await process([ev])

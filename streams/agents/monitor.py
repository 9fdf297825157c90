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
from ..idempotence import fresh, marked
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
        # Per task: (partition, offset, outcomes) of its input records in order, and the last event.
        by_task: dict[str, tuple[list[tuple[int, int, list[OutcomeEvent]]], Any]] = {}
        metrics.consumed(task_outcomes_name, len(events))
        for ev in events:
            outs, bad = decode_outcomes(ev.value)
            for raw, exc in bad:
                await w.dead_letter(ev, exc, "monitor", raw)
            msg = ev.message
            for o in outs:
                items = by_task.setdefault(o.task, ([], ev))[0]
                if not items or items[-1][1] != msg.offset:
                    items.append((msg.partition, msg.offset, []))
                items[-1][2].append(o)
                by_task[o.task] = (items, ev)
        for task, (items, ev) in by_task.items():
            if batched:
                bind(ev)  # the last event of this task: its partition owns the task's table entries
            # Each entry carries the (partition, offset) of the last record folded into it, in the
            # same changelog record as its numbers: a record replayed after a kill -9 is skipped.
            win = window_table[task].value()
            outs, mark = fresh(win, items)
            if outs:
                window_table[task] = marked(windows.add_outcomes(win, outs, cheap_tier), mark)
            tot = totals_table.get(task)
            outs, mark = fresh(tot, items)
            if outs:
                totals_table[task] = marked(windows.add_outcomes(tot, outs, cheap_tier), mark)
            try:
                result = monitor.on_outcomes_from(task, items)
            except Exception:  # a detector bug must not stop the other tasks or the worker
                metrics.errors.labels(stage="monitor").inc()
                log.exception("monitor failed on a batch of task %s (%d records)", task, len(items))
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

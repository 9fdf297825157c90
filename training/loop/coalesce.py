"""Coalescing: which run serves each retrain request (see :mod:`training.loop`).

* a request already seen (same ``retrain_id``, e.g. redelivered by Kafka after a crash) is a
  ``duplicate`` and never starts a second run;
* a request whose tasks a pending or running run covers ``joined`` it;
* a request whose tasks a finished run covered, with data collected after the request was made,
  is ``covered`` by that run;
* the remaining requests of one poll are merged into one ``new`` run (a deterministic id, so a
  replay finds the same run).
"""

from __future__ import annotations

from services.contracts import RetrainRequest

from .state import RunState, RunStatus, RunStore, run_id_for


def _covers(run_tasks: list[str], req_tasks: list[str]) -> bool:
    return set(req_tasks) <= set(run_tasks)


def plan(store: RunStore, requests: list[RetrainRequest]) -> tuple[list[RunState], dict[str, str]]:
    """Coalesce ``requests`` into runs (see the module doc). Returns the runs to execute (new or
    joined, not finished) and, per request, what happened (``duplicate``/``joined``/``covered``/``new``)."""
    index = store.index()
    states = {s.run_id: s for s in store.all()}
    decisions: dict[str, str] = {}
    touched: dict[str, RunState] = {}
    fresh: list[RetrainRequest] = []
    for req in requests:
        rid = req.retrain_id
        if rid in index or rid in decisions:
            decisions[rid] = "duplicate"
            continue
        active = [s for s in states.values() if not s.done and _covers(s.tasks, req.tasks)]
        covered = [
            s
            for s in states.values()
            if s.status == RunStatus.DONE
            and s.collected_at is not None
            and s.collected_at >= req.ts
            and _covers(s.tasks, req.tasks)
        ]
        target = (active or covered or [None])[0]
        if target is not None:
            target.request_ids.append(rid)
            target.requested_at.append(req.ts)
            if req.reason not in target.reasons:
                target.reasons.append(req.reason)
            decisions[rid] = "joined" if not target.done else "covered"
            touched[target.run_id] = target
            continue
        fresh.append(req)
        decisions[rid] = "new"
    if fresh:
        ids = [r.retrain_id for r in fresh]
        run_id = run_id_for(ids)
        state = states.get(run_id) or RunState(run_id=run_id)
        tasks = sorted({t for r in fresh for t in r.tasks})
        starts = [r.window_start for r in fresh if r.window_start]
        ends = [r.window_end for r in fresh if r.window_end]
        state.tasks = sorted(set(state.tasks) | set(tasks))
        state.request_ids = list(dict.fromkeys(state.request_ids + ids))
        state.requested_at = [r.ts for r in fresh]
        state.reasons = list(dict.fromkeys(state.reasons + [r.reason for r in fresh]))
        state.window_start = min(starts) if starts else None
        state.window_end = max(ends) if ends else None
        touched[run_id] = state
    for state in touched.values():
        store.save(state)
        store.remember(state.request_ids, state.run_id)
    return [s for s in touched.values() if not s.done], decisions

"""Agent ``join``: calls and feedback joined by request_id; outcomes, hard queries, features.

Consumes ``switchyard.calls.v1`` and ``switchyard.feedback.v1`` together in batches; publishes
each outcome on ``switchyard.outcomes.v1``, the same outcomes again as one record per task on
``<app_id>-task-outcomes`` (the monitor's input), the mined hard queries, and the router features
of the batch's calls per task on ``<app_id>-call-features`` (the input-drift agent's input).
A timer sweeps join entries past their TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from services.contracts import CallEvent, ContractError, FeedbackEvent, OutcomeEvent
from services.contracts.events import RoutingMode
from services.contracts.topics import CALLS, FEEDBACK, topic_name

from ..codecs import task_batches
from ..drift import FeatureBatch
from ..join import json_bytes
from ..mining import mine_call, mine_outcome
from ..wiring import Wiring

log = logging.getLogger(__name__)


def register(app: faust.App, w: Wiring) -> None:
    """Add the ``join`` agent and its sweep timer to ``app``."""
    settings, metrics, joiner, cheap_tier = w.settings, w.metrics, w.joiner, w.cheap_tier
    join_writes, outbox, topics = w.join_writes, w.outbox, w.topics
    assert join_writes is not None and outbox is not None
    calls_name, feedback_name = topic_name(CALLS, w.prefix), topic_name(FEEDBACK, w.prefix)
    outcomes_t, task_outcomes_t = topics["outcomes"], topics["task_outcomes"]
    hard_t, features_t = topics["hard_queries"], topics["features"]
    outcomes_name, task_outcomes_name = outcomes_t.get_topic_name(), task_outcomes_t.get_topic_name()
    hard_name, features_name = hard_t.get_topic_name(), features_t.get_topic_name()
    join_table = w.tables["join"]
    guard = w.replay_guard

    @app.agent(topics["calls_and_feedback"], name="join")
    async def join_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, settings.batch_within_s):
            if guard is not None:
                await guard.prepare(events)  # the replay after an assignment: what is already published
            now = time.time()
            outcomes: list[OutcomeEvent] = []
            hard: list[Any] = []
            features: dict[str, FeatureBatch] = {}
            n_calls = 0
            for ev in events:
                topic = ev.message.topic
                n_calls += topic == calls_name
                join_writes.event = ev
                dup_before = joiner.stats.duplicates
                try:
                    if topic == calls_name:
                        call = CallEvent.from_bytes(ev.value)
                        out = joiner.on_call(call, now, ev.message.partition)
                        if joiner.stats.duplicates == dup_before and call.mode is not RoutingMode.EXPLORE:
                            # shadow calls of the exploration are evidence, not traffic: no mining,
                            # no input features
                            hq = mine_call(call, settings.low_margin)
                            if hq is not None:
                                hard.append(hq)
                            fb = features.get(call.task)
                            if fb is None:
                                fb = features[call.task] = FeatureBatch()
                            fb.add(call.scores, call.chosen_model, call.prompt, call.usage.prompt_tokens)
                    else:
                        out = joiner.on_feedback(
                            FeedbackEvent.from_bytes(ev.value), now, ev.message.partition
                        )
                except ContractError as exc:
                    await w.dead_letter(ev, exc, "join")
                    continue
                if joiner.stats.duplicates != dup_before:
                    metrics.duplicates.inc()
                if out is not None:
                    outcomes.append(out)
                    hq = mine_outcome(out, cheap_tier)
                    if hq is not None:
                        hard.append(hq)
            metrics.consumed(calls_name, n_calls)
            metrics.consumed(feedback_name, len(events) - n_calls)
            encoded = [(o.task.encode(), o.to_bytes()) for o in outcomes]  # (key, value), in order
            public, internal = encoded, encoded
            if guard is not None and guard.ids:
                pairs = list(zip(encoded, [o.request_id for o in outcomes], strict=True))
                public = [e for e, rid in pairs if not guard.seen(outcomes_name, rid)]
                internal = [e for e, rid in pairs if not guard.seen(task_outcomes_name, rid)]
            # Outputs first, acknowledged, then the join's changelog: a "joined" marker never
            # reaches the changelog before its outcome is on the topics (else a kill -9 in between
            # loses the outcome: the replay finds the marker and derives nothing).
            if settings.direct_produce:
                for task, raw in public:
                    outbox.add(outcomes_name, task, raw)
                for task, batch in task_batches(internal):
                    outbox.add(task_outcomes_name, task, batch)
                for hq in hard:
                    outbox.add(hard_name, hq.task.encode(), hq.to_bytes())
                for task, batch in features.items():
                    outbox.add(features_name, task.encode(), json_bytes(batch.record()))
                await outbox.send(app.producer, wait=True)
                join_writes.flush_direct(outbox.add)
                await outbox.send(app.producer)
            else:
                sent = [await outcomes_t.send(key=task, value=raw) for task, raw in public]
                for task, batch in task_batches(internal):
                    sent.append(await task_outcomes_t.send(key=task, value=batch))
                for hq in hard:
                    sent.append(await hard_t.send(key=hq.task.encode(), value=hq.to_bytes()))
                for task, batch in features.items():
                    sent.append(await features_t.send(key=task, value=batch.record()))
                if sent:
                    await asyncio.gather(*sent)
                join_writes.flush()
            metrics.outcomes.inc(len(outcomes))
            for o in outcomes:
                if o.cache_hit:  # graded semantic-cache hits (per task: the cache watch)
                    metrics.cache_hits.labels(result="ok" if o.accepted else "false").inc()
            for hq in hard:
                metrics.hard_queries.labels(reason=hq.reason.value).inc()
            w.join_inputs += len(events)

    @app.timer(settings.join_sweep_s)
    async def sweep_join() -> None:
        n0 = joiner.stats.expired
        dropped = joiner.sweep(time.time())
        metrics.expired.inc(joiner.stats.expired - n0)
        metrics.join_entries.set(len(join_table))
        if dropped:
            log.info("join: swept %d expired entries", dropped)

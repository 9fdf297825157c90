"""Collect the data of one retrain run: the bootstrap benchmark data, plus the outcomes and hard
queries read back from Kafka for the requested window (bounded by count and age).

Splits are by prompt hash (:func:`training.splits.kfold`): fold 0 is the held-out set both the
champion and the challenger are measured on (it keeps every row of the drifting tasks), the other
folds train. Fresh labels (live outcomes, distilled labels) override the benchmark's label of the
model they grade for that prompt, in training and held-out rows alike: they are the current truth.
Tasks in ``exclude_tasks`` contribute no benchmark labels to training, only fresh ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.contracts import HardQueryEvent, OutcomeEvent, prompt_hash
from services.contracts.events import ContractError, Event, RoutingMode
from services.contracts.topics import HARD_QUERIES, OUTCOMES, TopicSpec, topic_name

from .data import LABEL, LOADERS, DataNotFoundError, check_datasets, labels_last
from .splits import kfold

log = logging.getLogger(__name__)

WEIGHT = "weight"
SOURCE = "source"
FRESH = "fresh"


@dataclass
class KafkaWindow:
    """What was read from one topic."""

    events: list[Event]
    read: int = 0
    invalid: int = 0
    too_old: int = 0


@dataclass
class Collected:
    """The inputs of a run, before distillation."""

    frame: pd.DataFrame  # bootstrap rows (+ weight, source); labels NaN where not graded
    outcomes: list[OutcomeEvent] = field(default_factory=list)
    hard_queries: list[HardQueryEvent] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def load_bootstrap(
    data_dir: Path,
    datasets: list[str],
    max_rows: int | None,
    tasks: list[str],
    seed: int = 0,
    *,
    holdout_rows: int = 0,
    holdout_folds: int = 5,
) -> pd.DataFrame:
    """The benchmark rows used by a run: a deterministic subsample of each dataset (``max_rows``),
    plus every row of ``tasks`` (the drifting tasks need enough held-out rows to be judged), plus
    up to ``holdout_rows`` more held-out rows per dataset (fold 0 of :func:`holdout_mask`, never
    trained on): the gate's per-task and per-dataset comparisons need more rows than a training
    subsample leaves them."""
    check_datasets(datasets)
    frames = []
    for d in datasets:
        try:
            f = LOADERS[d](data_dir).frame
        except DataNotFoundError as exc:
            log.warning("skipping dataset %s: %s", d, exc)
            continue
        keep = f["task"].isin(tasks) | (d in tasks)
        if max_rows and len(f) > max_rows:
            sample = f.sample(n=max_rows, random_state=seed)
            parts = [sample, f[keep.to_numpy()]]
            if holdout_rows:
                held = f[kfold(f["prompt_hash"], holdout_folds, seed=0) == 0]
                parts.append(held.sample(n=min(holdout_rows, len(held)), random_state=seed))
            f = pd.concat(parts).drop_duplicates(subset="id")
        frames.append(f)
    if not frames:
        raise DataNotFoundError(f"no benchmark data under {data_dir}")
    frame = labels_last(pd.concat(frames, ignore_index=True))
    frame[WEIGHT] = 1
    frame[SOURCE] = "bootstrap"
    return frame


def holdout_mask(frame: pd.DataFrame, folds: int) -> np.ndarray:
    """Held-out rows: fold 0 of ``folds`` by prompt hash (stable across runs and routers)."""
    return kfold(frame["prompt_hash"], folds, seed=0) == 0


async def _partitions(bootstrap: str, topic: str, client_options: dict[str, Any] | None = None) -> list[int]:
    """Partition ids of ``topic`` (from the admin API: a group-less consumer has no metadata for it)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client_options or {}))
    await admin.start()
    try:
        meta = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in meta[0]["partitions"])


async def read_topic(
    bootstrap: str,
    spec: TopicSpec,
    prefix: str,
    *,
    since: datetime,
    until: datetime | None,
    max_records: int,
    timeout_s: float = 60.0,
    client_options: dict[str, Any] | None = None,
) -> KafkaWindow:
    """Every valid record of a topic with ``since <= ts <= until`` (newest ``max_records`` kept),
    read from the broker's offsets for ``since`` to the current end; invalid records are counted."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = topic_name(spec, prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        client_id="switchyard-train-collect",
        **(client_options or {}),
    )
    await consumer.start()
    out = KafkaWindow(events=[])
    kept: deque[Event] = deque(maxlen=max_records)
    try:
        if topic not in await consumer.topics():
            log.warning("topic %s does not exist: nothing to collect", topic)
            return out
        tps = [TopicPartition(topic, p) for p in await _partitions(bootstrap, topic, client_options)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        todo = {}
        for tp in tps:
            off = starts.get(tp)
            if off is None or off.offset >= end[tp]:
                continue
            consumer.seek(tp, off.offset)
            todo[tp] = end[tp]
        async with asyncio.timeout(timeout_s):
            while todo:
                batch = await consumer.getmany(*todo.keys(), timeout_ms=1000, max_records=2000)
                for tp, records in batch.items():
                    for r in records:
                        if r.offset >= todo.get(tp, 0):
                            continue
                        out.read += 1
                        try:
                            ev = spec.model.from_bytes(r.value)
                        except ContractError:
                            out.invalid += 1
                            continue
                        ts = getattr(ev, "ts", None)
                        if ts is not None and (ts < since or (until is not None and ts > until)):
                            out.too_old += 1
                            continue
                        kept.append(ev)
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        del todo[tp]
    finally:
        await consumer.stop()
    out.events = list(kept)
    return out


async def collect_kafka(
    bootstrap: str,
    prefix: str,
    *,
    since: datetime,
    until: datetime | None,
    max_records: int,
    tasks: list[str] | None = None,
    client_options: dict[str, Any] | None = None,
) -> tuple[list[OutcomeEvent], list[HardQueryEvent], dict]:
    """Outcomes and hard queries of the window (hard queries restricted to ``tasks`` when given)."""
    window = {"since": since, "until": until, "max_records": max_records, "client_options": client_options}
    oc = await read_topic(bootstrap, OUTCOMES, prefix, **window)
    hq = await read_topic(bootstrap, HARD_QUERIES, prefix, **window)
    hard = [h for h in hq.events if not tasks or h.task in tasks]  # type: ignore[attr-defined]
    stats = {
        "outcomes_read": oc.read,
        "outcomes_invalid": oc.invalid,
        "outcomes_kept": len(oc.events),
        "hard_read": hq.read,
        "hard_invalid": hq.invalid,
        "hard_kept": len(hard),
        "outside_window": oc.too_old + hq.too_old,
    }
    return oc.events, hard, stats  # type: ignore[return-value]


def window_bounds(
    start: datetime | None,
    end: datetime | None,
    *,
    window_s: float,
    max_age_s: float,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """The window to read: the request's, else the last ``window_s``; never older than ``max_age_s``."""
    now = now or datetime.now(UTC)
    end = end or now
    start = start or end - timedelta(seconds=window_s)
    return max(start, now - timedelta(seconds=max_age_s)), end


def prompt_lookup(frame: pd.DataFrame, key: bytes | None = None) -> dict[str, tuple[str, str]]:
    """prompt hash → (prompt, task) of the bootstrap rows, to restore redacted prompts: by the
    plain hash and, with ``key`` (the events' prompt-hash key), by the keyed hash events carry."""
    rows = list(zip(frame["prompt_hash"], frame["prompt"], frame["task"], strict=True))
    out = {h: (p, t) for h, p, t in rows}
    if key:
        out.update({prompt_hash(p, key): (p, t) for _, p, t in rows})
    return out


def fresh_labels_from_outcomes(
    outcomes: list[OutcomeEvent],
    lookup: dict[str, tuple[str, str]],
    tasks: list[str] | tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """One row per (prompt, model) graded live: prompt_hash, prompt, task, model, label, weight.
    The latest signal per (prompt, model) wins; redacted prompts unknown to the bootstrap are dropped.

    Live feedback grades only the model the router chose, and the router chose the cheap model
    where it expected it to be right: on a stable task these labels are a biased sample that makes
    the cheap model look better than it is. So only outcomes of ``tasks`` (the drifting tasks a
    retrain targets) become labels; ``tasks=None`` keeps every task."""
    rows: dict[tuple[str, str], dict] = {}
    wanted = set(tasks) if tasks is not None else None
    for o in sorted(outcomes, key=lambda o: o.ts):
        if wanted is not None and o.task not in wanted:
            continue
        if o.cache_hit:  # a stored answer to another (similar) question: no label of the model here
            continue
        prompt = o.prompt or lookup.get(o.prompt_hash, (None, None))[0]
        if not prompt:
            continue
        # the row's identity is the plain hash of the text (the benchmark rows'), not the keyed
        # hash the event carries: a live label of a benchmark prompt replaces that row's label
        h = prompt_hash(prompt)
        rows[(h, o.chosen_model)] = {
            "prompt_hash": h,
            "prompt": prompt,
            "task": o.task,
            "model": o.chosen_model,
            "label": float(o.score),
            "weight": 1,
            "source": "explore" if o.mode is RoutingMode.EXPLORE else "outcome",
        }
    return pd.DataFrame(
        list(rows.values()), columns=["prompt_hash", "prompt", "task", "model", "label", "weight", "source"]
    )


def apply_fresh(
    frame: pd.DataFrame, fresh: pd.DataFrame, models: list[str], exclude_tasks: list[str]
) -> pd.DataFrame:
    """Merge fresh labels into the benchmark rows (they override the label of the model they grade),
    add rows for prompts the benchmark lacks, and record per row which labels are fresh (``fresh``).
    Rows of ``exclude_tasks`` without fresh labels get weight 0 (held-out only)."""
    f = frame.copy()
    for m in models:
        if LABEL + m not in f:
            f[LABEL + m] = np.nan
    f[FRESH] = ""
    f.loc[f["task"].isin(exclude_tasks).to_numpy(), WEIGHT] = 0
    if fresh.empty:
        return f
    index = {h: i for i, h in enumerate(f["prompt_hash"])}
    new_rows: dict[str, dict] = {}
    for r in fresh.itertuples(index=False):
        if r.model not in models:
            continue
        i = index.get(r.prompt_hash)
        if i is not None:
            f.at[i, LABEL + r.model] = r.label
            f.at[i, WEIGHT] = max(int(f.at[i, WEIGHT]), int(r.weight))
            f.at[i, FRESH] = f.at[i, FRESH] + "|" + r.model
            if f.at[i, SOURCE] == "bootstrap" or r.source == "distilled":
                f.at[i, SOURCE] = r.source
            continue
        row = new_rows.setdefault(
            r.prompt_hash,
            {
                "id": f"live-{r.prompt_hash[:16]}",
                "dataset": "live",
                "task": r.task,
                "prompt": r.prompt,
                "prompt_hash": r.prompt_hash,
                WEIGHT: int(r.weight),
                SOURCE: r.source,
                FRESH: "",
                **{LABEL + m: np.nan for m in models},
            },
        )
        row[LABEL + r.model] = r.label
        row[WEIGHT] = max(row[WEIGHT], int(r.weight))
        row[FRESH] += "|" + r.model
    if new_rows:
        f = pd.concat([f, pd.DataFrame(list(new_rows.values()))], ignore_index=True)
    return f


def training_rows(
    frame: pd.DataFrame, holdout: np.ndarray, models: list[str], exclude_tasks: list[str]
) -> pd.DataFrame:
    """Training rows (not held out, weight > 0), each repeated ``weight`` times (label weighting);
    rows of ``exclude_tasks`` keep only their fresh labels."""
    keep = ~np.asarray(holdout, bool) & (frame[WEIGHT].to_numpy() > 0)
    f = frame[keep].copy()
    excluded = f["task"].isin(exclude_tasks)
    for m in models:
        stale = excluded & ~f[FRESH].str.contains("|" + m, regex=False)
        f.loc[stale, LABEL + m] = np.nan
    return f.loc[f.index.repeat(f[WEIGHT].astype(int))].reset_index(drop=True)


def hash_of(text: str) -> str:
    return prompt_hash(text)

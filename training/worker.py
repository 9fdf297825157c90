"""The retrain worker: consumes ``switchyard.retrain.v1`` (and runs on demand or on a schedule),
coalesces requests, and executes idempotent, resumable runs of the closed loop:

    collect → distil → train (warm start) → evaluate + gate → register (challenger) → promote + redeploy

Run state lives under ``<state_dir>/loop/runs/<run_id>/state.json`` (written atomically after
every stage, with the stage's outputs beside it), and ``<state_dir>/loop/requests.json`` maps each
``retrain_id`` to the run that serves it. Hence:

* idempotent: a request already seen (same ``retrain_id``, e.g. redelivered by Kafka after a
  crash) never starts a second run;
* coalescing: requests that arrive while a run for their tasks is pending or running join it;
  a request whose tasks a finished run covered with data collected after the request was made is
  answered by that run; the remaining requests of one poll are merged into one new run;
* resumable: an unfinished run continues from its last completed stage (``switchyard train
  worker`` resumes them at start); Kafka offsets are committed only after the runs finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from services.contracts import RetrainRequest
from services.contracts.events import ContractError
from services.contracts.settings import KafkaSettings, MLflowSettings
from services.contracts.topics import RETRAIN, topic_name

from .loop_settings import LoopSettings

log = logging.getLogger(__name__)


class RunStatus(StrEnum):
    PENDING = "pending"
    COLLECTED = "collected"
    DISTILLED = "distilled"
    TRAINED = "trained"
    GATED = "gated"
    DONE = "done"
    FAILED = "failed"


ORDER = [
    RunStatus.PENDING,
    RunStatus.COLLECTED,
    RunStatus.DISTILLED,
    RunStatus.TRAINED,
    RunStatus.GATED,
    RunStatus.DONE,
]
TERMINAL = {RunStatus.DONE, RunStatus.FAILED}
RESUME_EVERY_S = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunState(BaseModel):
    """One run of the loop, persisted after every stage."""

    run_id: str
    created: datetime = Field(default_factory=utcnow)
    updated: datetime = Field(default_factory=utcnow)
    status: RunStatus = RunStatus.PENDING
    reasons: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list, description="Drifting tasks ([] = none named).")
    request_ids: list[str] = Field(default_factory=list)
    requested_at: list[datetime] = Field(default_factory=list)
    window_start: datetime | None = None
    window_end: datetime | None = None
    collected_at: datetime | None = None
    attempts: int = 0
    collect: dict[str, Any] = Field(default_factory=dict)
    distill: dict[str, Any] = Field(default_factory=dict)
    router_dir: str | None = None
    router_version: str | None = None
    champion_version: str | None = Field(default=None, description="Registered version that was champion.")
    mlflow_run_id: str | None = None
    model_version: str | None = None
    verdict: dict[str, Any] | None = None
    promoted: bool = False
    redeploy: dict[str, Any] | None = None
    error: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def reached(self, status: RunStatus) -> bool:
        """Whether the run completed ``status`` (stages are ordered)."""
        if self.status == RunStatus.FAILED:
            return False
        return ORDER.index(self.status) >= ORDER.index(status)


class RunStore:
    """Run states and the request → run index under one directory (atomic JSON writes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.index_path = self.root / "requests.json"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def save(self, state: RunState) -> None:
        state.updated = utcnow()
        self._write(self.run_dir(state.run_id) / "state.json", state.model_dump_json(indent=1))

    def load(self, run_id: str) -> RunState | None:
        p = self.run_dir(run_id) / "state.json"
        return RunState.model_validate_json(p.read_text(encoding="utf-8")) if p.exists() else None

    def all(self) -> list[RunState]:
        if not self.runs.exists():
            return []
        out = [self.load(p.name) for p in sorted(self.runs.iterdir()) if (p / "state.json").exists()]
        return sorted([s for s in out if s is not None], key=lambda s: s.created)

    def index(self) -> dict[str, str]:
        if not self.index_path.exists():
            return {}
        return json.loads(self.index_path.read_text(encoding="utf-8"))

    def remember(self, request_ids: list[str], run_id: str) -> None:
        idx = self.index()
        idx.update({r: run_id for r in request_ids})
        self._write(self.index_path, json.dumps(idx, indent=1))


def run_id_for(request_ids: list[str]) -> str:
    """Deterministic id of a run created for these requests (a replay finds the same run)."""
    return "run-" + hashlib.sha256("\n".join(sorted(request_ids)).encode()).hexdigest()[:12]


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


# --------------------------------------------------------------------------------------------
# executing a run


@dataclass
class LoopContext:
    """What a run needs: settings and where things are (built by the CLI / tests)."""

    loop: LoopSettings
    mlflow: MLflowSettings
    kafka: KafkaSettings | None
    data_dir: Path
    state_dir: Path
    catalog_path: Path | None = None
    embeddings_dir: Path | None = None

    @property
    def cache_dir(self) -> Path:
        return self.embeddings_dir or self.state_dir / "cache" / "embeddings"

    def store(self) -> RunStore:
        return RunStore(self.state_dir / "loop")


def _load_champion(ctx: LoopContext):  # noqa: ANN202
    from services.router.artifact import RouterLoadError, load_router

    from .promote import alias_version

    version = alias_version(ctx.mlflow, "champion")
    if version is None:
        return None, None
    try:
        return load_router(
            f"models:/{ctx.mlflow.registered_model}/{version}", tracking_uri=ctx.mlflow.tracking_uri
        ), version
    except RouterLoadError as exc:
        log.error("champion version %s cannot be loaded (%s): gating against no champion", version, exc)
        return None, version


def warm_start_params(champion, vocab: list[str], models: list[str]) -> dict | None:  # noqa: ANN001
    """The champion's mlp weights re-indexed to a new task vocabulary (new tasks start at 0)."""
    import numpy as np

    if champion is None or champion.manifest.kind != "mlp" or list(champion.models) != list(models):
        return None
    from safetensors.numpy import load_file

    p = load_file(str(champion.path / "head.safetensors"))
    old_vocab = list(champion.manifest.task_vocab)
    d = p["w1"].shape[0] - len(old_vocab)
    w1 = np.zeros((d + len(vocab), p["w1"].shape[1]), dtype=np.float32)
    w1[:d] = p["w1"][:d]
    for i, t in enumerate(vocab):
        if t in old_vocab:
            w1[d + i] = p["w1"][d + old_vocab.index(t)]
    return {"w1": w1, "b1": p["b1"], "w2": p["w2"], "b2": p["b2"]}


class LazyEncoder:
    """The encoder, loaded only when a prompt is missing from the embedding cache (loading it costs
    a minute on a busy 2-core machine; the loop's prompts are usually all cached)."""

    def __init__(self, config=None) -> None:  # noqa: ANN001 - EncoderConfig (import is lazy)
        from services.router.encoder import EncoderConfig

        self.config = config or EncoderConfig()
        self._enc = None

    @property
    def dim(self) -> int:
        return 384

    def weights_sha256(self) -> str:
        from services.router.encoder import weights_sha256

        return weights_sha256()

    def encode(self, texts):  # noqa: ANN001, ANN201
        if self._enc is None:
            from services.router.encoder import Encoder

            self._enc = Encoder(self.config)
        return self._enc.encode(texts)


class RunExecutor:
    """Runs the stages of one :class:`RunState`, skipping those already completed."""

    def __init__(self, ctx: LoopContext, *, redeploy_fn: Callable[..., Any] | None = None) -> None:
        self.ctx = ctx
        self.store = ctx.store()
        self.redeploy_fn = redeploy_fn
        self._cache = None
        self._encoder_config = None

    def encoder_config(self):  # noqa: ANN201 - EncoderConfig
        """The champion's encoder (a challenger is served and gated on the same embeddings), else
        the configured one for the first router (``SWITCHYARD_TRAIN_ENCODER_*``)."""
        if self._encoder_config is None:
            from services.router.encoder import EncoderConfig

            champion, _ = _load_champion(self.ctx)
            if champion is not None and champion.encoder_weights is None:
                self._encoder_config = champion.encoder_config
            else:  # no champion, or a fine-tuned one (its encoder is not the frozen base model)
                s = self.ctx.loop
                self._encoder_config = EncoderConfig(
                    max_length=s.encoder_max_length, quantize_int8=s.encoder_int8, backend=s.encoder_backend
                )
        return self._encoder_config

    def embed(self, prompts, hashes):  # noqa: ANN001, ANN201
        """Cached MiniLM embeddings (one cache per executor; the encoder loads lazily)."""
        from .embeddings import EmbeddingCache

        if self._cache is None:
            self._cache = EmbeddingCache(self.ctx.cache_dir, LazyEncoder(self.encoder_config()))
        return self._cache.embed(list(prompts), list(hashes))

    def training_set(self, frame, models):  # noqa: ANN001, ANN201
        """A :class:`training.train.TrainingSet` of ``frame`` (what ``prepare`` builds, lazily)."""
        import numpy as np

        from .data import LABEL
        from .train import TrainingSet

        frame = frame.reset_index(drop=True)
        emb = self.embed(frame["prompt"].tolist(), frame["prompt_hash"].tolist())
        labels = frame[[LABEL + m for m in models]].to_numpy(dtype=np.float64)
        return TrainingSet(frame, emb, frame["task"].tolist(), labels, list(models))

    # -- helpers -------------------------------------------------------------------------------
    def _dir(self, state: RunState) -> Path:
        d = self.store.run_dir(state.run_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _catalog(self):  # noqa: ANN202
        from services.catalog import load_catalog

        return load_catalog(self.ctx.catalog_path)

    def _frame(self, state: RunState):  # noqa: ANN202
        from .collect import load_bootstrap

        s = self.ctx.loop
        return load_bootstrap(
            self.ctx.data_dir,
            list(s.datasets),
            s.max_rows,
            state.tasks,
            holdout_rows=s.holdout_rows,
            holdout_folds=s.holdout_folds,
        )

    # -- stages --------------------------------------------------------------------------------
    def collect(self, state: RunState) -> None:
        from .collect import collect_kafka, window_bounds

        t0 = time.perf_counter()
        s = self.ctx.loop
        start, end = window_bounds(
            state.window_start, state.window_end, window_s=s.window_s, max_age_s=s.max_age_s
        )
        outcomes, hard, stats = [], [], {"kafka": False}
        if self.ctx.kafka is not None:
            outcomes, hard, stats = asyncio.run(
                collect_kafka(
                    self.ctx.kafka.bootstrap,
                    self.ctx.kafka.topic_prefix,
                    since=start,
                    until=None,
                    max_records=s.max_records,
                    tasks=state.tasks or None,
                )
            )
            stats["kafka"] = True
        d = self._dir(state)
        with (d / "outcomes.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(o.model_dump_json() + "\n" for o in outcomes)
        with (d / "hard_queries.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(h.model_dump_json() + "\n" for h in hard)
        state.collect = {**stats, "window_start": start.isoformat(), "window_end": end.isoformat()}
        state.collected_at = utcnow()
        state.timings["collect_s"] = time.perf_counter() - t0
        state.status = RunStatus.COLLECTED

    def _read(self, state: RunState, name: str, model):  # noqa: ANN001, ANN202
        p = self.store.run_dir(state.run_id) / name
        if not p.exists():
            return []
        return [
            model.model_validate_json(line)
            for line in p.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]

    def distil(self, state: RunState) -> None:
        from services.contracts import HardQueryEvent
        from services.providers.pool import ProviderPool

        from .collect import prompt_lookup
        from .distill import distill

        t0 = time.perf_counter()
        hard = self._read(state, "hard_queries.jsonl", HardQueryEvent)
        frame = self._frame(state)
        lookup = prompt_lookup(frame)
        embed = self.embed
        catalog = self._catalog()

        async def go():  # noqa: ANN202
            pool = ProviderPool(catalog)
            try:
                return await distill(hard, lookup, embed, pool, catalog, self.ctx.loop, self._dir(state))
            finally:
                await pool.aclose()

        labels, report = asyncio.run(go())
        labels.to_json(self._dir(state) / "distilled.jsonl", orient="records", lines=True)
        state.distill = report.model_dump()
        state.timings["distill_s"] = time.perf_counter() - t0
        state.status = RunStatus.DISTILLED

    def _datasets(self, state: RunState):  # noqa: ANN202
        """(full frame with fresh labels, holdout mask, models)."""
        import pandas as pd

        from services.contracts import OutcomeEvent

        from .collect import apply_fresh, fresh_labels_from_outcomes, holdout_mask, prompt_lookup

        catalog = self._catalog()
        frame = self._frame(state)
        outcomes = self._read(state, "outcomes.jsonl", OutcomeEvent)
        fresh = fresh_labels_from_outcomes(outcomes, prompt_lookup(frame), tasks=list(state.tasks))
        p = self.store.run_dir(state.run_id) / "distilled.jsonl"
        if p.exists() and p.stat().st_size:
            fresh = pd.concat([fresh, pd.read_json(p, orient="records", lines=True)], ignore_index=True)
        models = [
            c[len("label:") :] for c in frame.columns if c.startswith("label:") and c[6:] in catalog.model_ids
        ]
        full = apply_fresh(frame, fresh, models, list(self.ctx.loop.exclude_tasks))
        return full, holdout_mask(full, self.ctx.loop.holdout_folds), models, catalog

    def train(self, state: RunState) -> None:
        from services.router.encoder import weights_sha256

        from .collect import training_rows
        from .train import TrainConfig, train_router

        t0 = time.perf_counter()
        s = self.ctx.loop
        full, hold, models, catalog = self._datasets(state)
        rows = training_rows(full, hold, models, list(s.exclude_tasks))
        enc = self.encoder_config()
        ts = self.training_set(rows, models)
        champion, cv = _load_champion(self.ctx) if s.warm_start else (None, None)
        from .train import task_vocab

        init = warm_start_params(champion, task_vocab(ts.tasks), models) if champion is not None else None
        out = self._dir(state) / "router"
        if out.exists():
            shutil.rmtree(out)
        cfg = TrainConfig(
            kind=s.kind,
            epochs=s.epochs,
            calibration_folds=s.calibration_folds,
            cold_folds=s.cold_folds,
            cold_start_coverage=s.cold_start_coverage,
            ensemble=s.ensemble,
            warm_epochs=s.warm_epochs,
        )
        manifest, metrics = train_router(
            ts,
            cfg,
            catalog,
            out,
            encoder=enc,
            encoder_sha=weights_sha256(),
            extra={
                "run_id": state.run_id,
                "warm_start": cv if init is not None else None,
                "fresh_rows": int((rows["source"] != "bootstrap").sum()),
            },
            init=init,
        )
        state.router_dir, state.router_version = str(out), manifest.version
        state.timings["train_s"] = time.perf_counter() - t0
        state.timings["train_rows"] = float(len(rows))
        state.status = RunStatus.TRAINED

    def evaluate_and_register(self, state: RunState) -> None:
        from services.router.artifact import load_local

        from .compare import evaluate_router, plot_comparison
        from .gate import gate, metrics_of
        from .promote import tag_version
        from .registry import log_run

        t0 = time.perf_counter()
        s = self.ctx.loop
        full, hold, models, catalog = self._datasets(state)
        ho = self.training_set(full[hold], models)
        challenger = load_local(state.router_dir)
        champion, cv = _load_champion(self.ctx)
        state.champion_version = cv
        ev_new = evaluate_router(challenger, ho, catalog, s.quality_target)
        ev_old = evaluate_router(champion, ho, catalog, s.quality_target) if champion is not None else None
        verdict = gate(ev_new, ev_old, s.gate_config(), state.tasks)
        d = self._dir(state)
        (d / "gate.json").write_text(
            json.dumps(
                {
                    "verdict": verdict.model_dump(),
                    "challenger": ev_new.model_dump(),
                    "champion": ev_old.model_dump() if ev_old else None,
                },
                indent=1,
                default=str,
            ),
            encoding="utf-8",
        )
        (d / "distill.json").write_text(json.dumps(state.distill, indent=1, default=str), encoding="utf-8")
        plot = plot_comparison(ev_old, ev_new, state.tasks, d / "gate.png")
        extra = [d / "gate.json", d / "distill.json", plot]
        extra += [p for p in d.glob("finetune-*.jsonl")]
        metrics = {
            **metrics_of("challenger", ev_new),
            **(metrics_of("champion", ev_old) if ev_old else {}),
            "gate.passed": float(verdict.passed),
            "distill.spent_usd": float(state.distill.get("spent_usd", 0)),
            "distill.calls": float(state.distill.get("calls", 0)),
            "distill.labels": float(state.distill.get("labels", 0)),
            **{f"time.{k}": float(v) for k, v in state.timings.items()},
        }
        params = {
            "loop": s.model_dump(mode="json"),
            "run_id": state.run_id,
            "tasks": ",".join(state.tasks),
            "reasons": " | ".join(state.reasons),
            "champion_version": cv,
            "gate": {"passed": verdict.passed, "reasons": " | ".join(verdict.reasons)},
        }
        reg = log_run(
            self.ctx.mlflow,
            Path(state.router_dir),
            challenger.manifest,
            params,
            metrics,
            extra_artifacts=extra,
            register=True,
            alias="challenger",
            run_name=f"retrain {state.run_id} {'PASS' if verdict.passed else 'FAIL'}",
        )
        tag_version(
            self.ctx.mlflow,
            reg.version,
            {
                "gate": "passed" if verdict.passed else "failed",
                "gate_reasons": " | ".join(verdict.reasons),
                "retrain_run_id": state.run_id,
                "drift_tasks": ",".join(state.tasks),
            },
        )
        state.mlflow_run_id, state.model_version = reg.run_id, reg.version
        state.verdict = verdict.model_dump()
        state.timings["gate_s"] = time.perf_counter() - t0
        state.status = RunStatus.GATED
        log.info(
            "run %s: challenger %s (version %s) %s",
            state.run_id,
            challenger.version,
            reg.version,
            verdict.summary(),
        )

    def promote(self, state: RunState) -> None:
        from .promote import promote_and_redeploy

        t0 = time.perf_counter()
        if state.verdict and state.verdict["passed"] and self.ctx.loop.auto_promote:
            if self.redeploy_fn is not None:
                from .registry import promote

                promote(self.ctx.mlflow, version=state.model_version)
                res = self.redeploy_fn(state.model_version)
            else:
                _, res = promote_and_redeploy(
                    self.ctx.mlflow, state.model_version, do_redeploy=self.ctx.loop.redeploy
                )
            state.promoted = True
            state.redeploy = res.model_dump() if hasattr(res, "model_dump") else res
        state.timings["promote_s"] = time.perf_counter() - t0
        state.status = RunStatus.DONE

    def execute(self, state: RunState) -> RunState:
        """Run the remaining stages; the state is saved after each. A failure marks the run failed
        (with the error) after ``max_attempts``; otherwise it stays resumable."""
        stages = [
            (RunStatus.COLLECTED, self.collect),
            (RunStatus.DISTILLED, self.distil),
            (RunStatus.TRAINED, self.train),
            (RunStatus.GATED, self.evaluate_and_register),
            (RunStatus.DONE, self.promote),
        ]
        state.attempts += 1
        t0 = time.perf_counter()
        for target, fn in stages:
            if state.reached(target):
                continue
            try:
                fn(state)
            except Exception as exc:
                state.error = f"{fn.__name__}: {type(exc).__name__}: {exc}"
                log.exception("run %s failed in %s", state.run_id, fn.__name__)
                if state.attempts >= 3:
                    state.status = RunStatus.FAILED
                self.store.save(state)
                raise
            self.store.save(state)
        state.timings["total_s"] = state.timings.get("total_s", 0.0) + time.perf_counter() - t0
        state.error = None
        self.store.save(state)
        return state


def run_requests(
    ctx: LoopContext, requests: list[RetrainRequest], executor: RunExecutor | None = None
) -> tuple[list[RunState], dict[str, str]]:
    """Plan ``requests`` and execute the runs (sequentially); returns the runs and the decisions."""
    executor = executor or RunExecutor(ctx)
    runs, decisions = plan(ctx.store(), requests)
    done = []
    for state in runs:
        done.append(executor.execute(state))
    return done, decisions


def resume_unfinished(ctx: LoopContext, executor: RunExecutor | None = None) -> list[RunState]:
    """Finish every run left unfinished (e.g. by a crash)."""
    executor = executor or RunExecutor(ctx)
    out = []
    for state in ctx.store().all():
        if not state.done:
            log.info("resuming run %s from %s", state.run_id, state.status)
            try:
                out.append(executor.execute(state))
            except Exception:  # noqa: BLE001 - logged; stays resumable or failed
                pass
    return out


async def consume(
    ctx: LoopContext,
    *,
    stop: asyncio.Event | None = None,
    idle_exit_s: float | None = None,
    max_runs: int | None = None,
    executor: RunExecutor | None = None,
) -> list[RunState]:
    """The worker loop: read retrain requests, coalesce for ``coalesce_s``, run, commit offsets.
    Also retrains every ``schedule_s`` if set. Returns the runs executed (for tests/CLI)."""
    from aiokafka import AIOKafkaConsumer

    if ctx.kafka is None:
        raise ValueError("the worker needs Kafka settings")
    executor = executor or RunExecutor(ctx)
    stop = stop or asyncio.Event()
    topic = topic_name(RETRAIN, ctx.kafka.topic_prefix)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=ctx.kafka.bootstrap,
        group_id=ctx.kafka.topic_prefix + ctx.loop.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="switchyard-train-worker",
        max_poll_interval_ms=3_600_000,
    )
    await consumer.start()
    executed: list[RunState] = []
    last_activity = last_run = last_resume = time.monotonic()
    invalid = 0
    try:
        await asyncio.to_thread(resume_unfinished, ctx, executor)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=1000)
            requests: list[RetrainRequest] = []
            for records in batch.values():
                for r in records:
                    try:
                        requests.append(RetrainRequest.from_bytes(r.value))
                    except ContractError as exc:
                        invalid += 1
                        log.warning("skipping invalid retrain request at offset %s: %s", r.offset, exc)
            if requests and ctx.loop.coalesce_s > 0:
                deadline = time.monotonic() + ctx.loop.coalesce_s
                while time.monotonic() < deadline:
                    more = await consumer.getmany(
                        timeout_ms=int(max(1, (deadline - time.monotonic()) * 1000))
                    )
                    for records in more.values():
                        for r in records:
                            try:
                                requests.append(RetrainRequest.from_bytes(r.value))
                            except ContractError:
                                invalid += 1
            if not requests and ctx.loop.schedule_s and time.monotonic() - last_run >= ctx.loop.schedule_s:
                requests = [RetrainRequest(reason="scheduled retrain", source="schedule")]
            if requests:
                log.info("retrain requests: %s", [(r.retrain_id, r.tasks, r.reason) for r in requests])
                try:
                    runs, decisions = await asyncio.to_thread(run_requests, ctx, requests, executor)
                except Exception:  # noqa: BLE001 - run state keeps the error; resumed later
                    log.error("a run failed; it stays resumable")
                    runs, decisions = [], {}
                log.info("coalescing: %s", decisions)
                executed.extend(runs)
                await consumer.commit()
                last_activity = last_run = time.monotonic()
            elif time.monotonic() - last_resume >= RESUME_EVERY_S:
                # a run that failed (and is not yet marked failed) is retried while idle
                last_resume = time.monotonic()
                if any(not s.done for s in ctx.store().all()):
                    executed.extend(await asyncio.to_thread(resume_unfinished, ctx, executor))
            if max_runs is not None and len(executed) >= max_runs:
                break
            if idle_exit_s is not None and time.monotonic() - last_activity > idle_exit_s:
                break
    finally:
        await consumer.stop()
    return executed


async def publish_request(kafka: KafkaSettings, req: RetrainRequest) -> None:
    """Send a retrain request to ``switchyard.retrain.v1`` (operator trigger)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic_name(RETRAIN, kafka.topic_prefix), req.to_bytes())
    finally:
        await producer.stop()

"""Executing a run of the closed loop, stage by stage, resumable:

    collect → distil → train (warm start) → evaluate + gate → register (challenger) → promote

(the gateway's replicas follow the ``champion`` alias by themselves)

:class:`RunExecutor` skips the stages a run already completed and saves the state after each
(:mod:`training.loop.state`); :func:`run_requests` plans (:mod:`training.loop.coalesce`) and runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from services.contracts import RetrainRequest
from services.contracts.settings import KafkaSettings, MLflowSettings

from ..settings import TrainSettings
from .coalesce import plan
from .state import RunState, RunStatus, RunStore, utcnow

log = logging.getLogger(__name__)


@dataclass
class LoopContext:
    """What a run needs: settings and where things are (built by the CLI / tests)."""

    settings: TrainSettings
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

    from ..promote import alias_version

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


def label_tasks(run_tasks: list[str], exclude_tasks: list[str] | tuple[str, ...]) -> list[str]:
    """Tasks whose live outcomes become labels in a run: the run's own (drifting or flagged) tasks,
    plus the tasks the bootstrap data gives no labels for (``exclude_tasks``). Live labels are all
    the router knows of those, so a retrain for another task must keep them: otherwise the run
    after a repair (say, of a new task's drift) forgets it."""
    return sorted({*run_tasks, *exclude_tasks})


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


class RunExecutor:
    """Runs the stages of one :class:`RunState`, skipping those already completed."""

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx
        self.store = ctx.store()
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
                s = self.ctx.settings
                self._encoder_config = EncoderConfig(
                    max_length=s.encoder_max_length, quantize_int8=s.encoder_int8, backend=s.encoder_backend
                )
        return self._encoder_config

    def embed(self, prompts, hashes):  # noqa: ANN001, ANN201
        """Cached MiniLM embeddings (one cache per executor; the encoder loads lazily)."""
        from ..embeddings import EmbeddingCache, LazyEncoder

        if self._cache is None:
            static = self.ctx.state_dir / "cache" / "static"
            self._cache = EmbeddingCache(
                self.ctx.cache_dir, LazyEncoder(self.encoder_config(), static_cache_dir=static)
            )
        return self._cache.embed(list(prompts), list(hashes))

    def training_set(self, frame, models):  # noqa: ANN001, ANN201
        """A :class:`training.train.TrainingSet` of ``frame`` (what ``prepare`` builds, lazily)."""
        import numpy as np

        from ..data import LABEL
        from ..train import TrainingSet

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

    def _hash_key(self) -> bytes:
        """The events' prompt-hash key (to restore redacted prompts from the benchmark rows)."""
        from services.contracts.settings import PrivacySettings

        return PrivacySettings().key(self.ctx.state_dir)

    def _frame(self, state: RunState):  # noqa: ANN202
        from ..collect import load_bootstrap

        s = self.ctx.settings
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
        from ..collect import collect_kafka, window_bounds

        t0 = time.perf_counter()
        s = self.ctx.settings
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
                    client_options=self.ctx.kafka.client_options(),
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

        from ..collect import prompt_lookup
        from ..distill import distill

        t0 = time.perf_counter()
        hard = self._read(state, "hard_queries.jsonl", HardQueryEvent)
        frame = self._frame(state)
        lookup = prompt_lookup(frame, self._hash_key())
        embed = self.embed
        catalog = self._catalog()

        async def go():  # noqa: ANN202
            pool = ProviderPool(catalog)
            try:
                return await distill(hard, lookup, embed, pool, catalog, self.ctx.settings, self._dir(state))
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

        from ..collect import apply_fresh, fresh_labels_from_outcomes, holdout_mask, prompt_lookup

        catalog = self._catalog()
        frame = self._frame(state)
        outcomes = self._read(state, "outcomes.jsonl", OutcomeEvent)
        fresh = fresh_labels_from_outcomes(
            outcomes,
            prompt_lookup(frame, self._hash_key()),
            tasks=label_tasks(state.tasks, self.ctx.settings.exclude_tasks),
        )
        p = self.store.run_dir(state.run_id) / "distilled.jsonl"
        if p.exists() and p.stat().st_size:
            fresh = pd.concat([fresh, pd.read_json(p, orient="records", lines=True)], ignore_index=True)
        models = [
            c[len("label:") :] for c in frame.columns if c.startswith("label:") and c[6:] in catalog.model_ids
        ]
        full = apply_fresh(frame, fresh, models, list(self.ctx.settings.exclude_tasks))
        return full, holdout_mask(full, self.ctx.settings.holdout_folds), models, catalog

    def train(self, state: RunState) -> None:
        from services.router.encoder import weights_sha256

        from ..collect import training_rows
        from ..train import task_vocab, train_router

        t0 = time.perf_counter()
        s = self.ctx.settings
        full, hold, models, catalog = self._datasets(state)
        rows = training_rows(full, hold, models, list(s.exclude_tasks))
        enc = self.encoder_config()
        ts = self.training_set(rows, models)
        champion, cv = _load_champion(self.ctx) if s.warm_start else (None, None)
        init = warm_start_params(champion, task_vocab(ts.tasks), models) if champion is not None else None
        out = self._dir(state) / "router"
        if out.exists():
            shutil.rmtree(out)
        cfg = s.train_config()
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
            static_cache_dir=self.ctx.state_dir / "cache" / "static",
        )
        state.router_dir, state.router_version = str(out), manifest.version
        state.timings["train_s"] = time.perf_counter() - t0
        state.timings["train_rows"] = float(len(rows))
        state.status = RunStatus.TRAINED

    def evaluate_and_register(self, state: RunState) -> None:
        from services.router.artifact import load_local

        from ..evaluation.compare import compare
        from ..promote import tag_version
        from ..registry import log_run
        from .artefacts import distillation_metrics, log_distillation, write_distillation

        t0 = time.perf_counter()
        s = self.ctx.settings
        full, hold, models, catalog = self._datasets(state)
        ho = self.training_set(full[hold], models)
        challenger = load_local(state.router_dir)
        champion, cv = _load_champion(self.ctx)
        state.champion_version = cv
        result = compare(challenger, champion, ho, catalog, s.gate_config(), state.tasks)
        verdict = result.verdict
        d = self._dir(state)
        gate_json, plot = result.write(d)
        (d / "distill.json").write_text(json.dumps(state.distill, indent=1, default=str), encoding="utf-8")
        extra = [gate_json, d / "distill.json", plot]
        # the fine-tuning file for the cheap tier: a first-class artefact (distillation/), with counts
        folder, summary = write_distillation(
            d,
            state.distill,
            run_id=state.run_id,
            tasks=list(state.tasks),
            strong_model=catalog.strong_model,
            cheap_model=s.cheap_model,
        )
        metrics = {
            **result.metrics(),
            "distill.spent_usd": float(state.distill.get("spent_usd", 0)),
            "distill.calls": float(state.distill.get("calls", 0)),
            "distill.labels": float(state.distill.get("labels", 0)),
            **distillation_metrics(summary),
            **{f"time.{k}": float(v) for k, v in state.timings.items()},
        }
        params = {
            "loop": s.loop_params(),
            "run_id": state.run_id,
            "tasks": ",".join(state.tasks),
            "reasons": " | ".join(state.reasons),
            "champion_version": cv,
            "gate": {"passed": verdict.passed, "reasons": " | ".join(verdict.reasons)},
            "distillation": {
                "file": summary["file"],
                "format": summary["format"],
                "examples": summary["examples"],
                "teacher_model": summary["teacher_model"],
                "target_model": summary["target_model"],
            },
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
        artefact = log_distillation(self.ctx.mlflow, reg.run_id, folder)
        state.distill = {
            **state.distill,
            "artifact": artefact,
            "finetune_examples": summary["examples"],
            "finetune_per_task": summary["per_task"],
            "finetune_tokens": summary["tokens_estimate"],
        }
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
        """Move ``champion`` when the gate passed (the gateway's replicas follow the alias); with a
        gateway URL, wait until it reports serving the new version."""
        from ..promote import promote_and_wait

        t0 = time.perf_counter()
        if state.verdict and state.verdict["passed"] and self.ctx.settings.auto_promote:
            s = self.ctx.settings
            _, res = promote_and_wait(
                self.ctx.mlflow, state.model_version, gateway_url=s.gateway_url, timeout_s=s.serving_timeout_s
            )
            state.promoted = True
            state.redeploy = res.model_dump() if res is not None else None
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

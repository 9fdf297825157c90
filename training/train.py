"""Training: frozen-encoder embeddings (cached) → router heads → calibration → an artefact.

``train_router`` is what ``switchyard train router`` and ``make router`` run: out-of-fold
predictions on the training data fit the calibration (Platt per model and task, threshold tables
per task), then the head is refitted on all rows and saved with the cascade answer scorer.
Labels missing for a model (a dataset that did not grade it) are masked out of the loss.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from services.catalog import Catalog
from services.router.artifact import Manifest, save_router
from services.router.calibration import (
    MIN_TASK_ROWS,
    Calibration,
    Platt,
    ThresholdTable,
    comparable_rows,
    fit_platt,
    fit_table,
)
from services.router.encoder import Encoder, EncoderConfig, pick_device
from services.router.heads import HEADS, features, make_head, sigmoid

from .cascade import fit_cascade, fit_cascade_table
from .data import MIXTRAL, Benchmark
from .embeddings import EmbeddingCache
from .splits import kfold, task_folds, train_mask

log = logging.getLogger(__name__)

KINDS = ("random", "knn", "mf", "mlp")


class TrainConfig(BaseModel):
    """Hyper-parameters of one router training run (logged to MLflow as params)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(default="mlp", description=f"one of {KINDS}")
    hidden: int = Field(default=128, ge=1)
    rank: int = Field(default=64, ge=1, description="mf: factor dimension")
    epochs: int = Field(default=12, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    min_table_rows: int = Field(
        default=MIN_TASK_ROWS,
        ge=1,
        description="Rows (graded for 2+ models) a task needs for its own threshold table.",
    )
    warm_epochs: int = Field(
        default=3, ge=1, description="Epochs of the final fit when it starts from a champion (warm start)."
    )
    ensemble: int = Field(
        default=1,
        ge=1,
        le=16,
        description="mlp: average the logits of this many heads trained with seeds seed..seed+K-1.",
    )
    threshold_confidence: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Thresholds keep the quality target with this one-sided confidence (0: point estimate).",
    )
    batch_size: int = Field(default=512, ge=1)
    k: int = Field(default=64, ge=1, description="knn: neighbours")
    knn_temperature: float = Field(default=0.05, gt=0)
    calibration_folds: int = Field(default=5, ge=2)
    seed: int = 0
    device: str | None = None
    cascade_model: str | None = MIXTRAL
    rule: str = Field(default="gap", description="Routing rule served (services.router.policy.RULES).")
    task_dropout: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Share of training rows whose task features are blanked per batch, so a "
        "query of a task the head never saw (blank task features) is in-distribution.",
    )
    cold_start: bool = Field(
        default=True,
        description="Fit the cold-start calibration (unknown tasks) on leave-tasks-out predictions.",
    )
    cold_folds: int = Field(default=10, ge=2, description="Leave-tasks-out folds of the cold-start fit.")
    cold_start_coverage: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Cold-start table: share of held-out tasks that must each keep the target "
        "(within 1.5 points); 0 keeps it on the pooled new-task rows (on average).",
    )


@dataclass
class TrainingSet:
    """Features of a benchmark: embeddings, tasks, labels (n, M; NaN = not graded), prices."""

    frame: pd.DataFrame
    embeddings: np.ndarray
    tasks: list[str]
    labels: np.ndarray
    models: list[str]

    def subset(self, mask: np.ndarray) -> TrainingSet:
        mask = np.asarray(mask, dtype=bool)
        return TrainingSet(
            self.frame[mask].reset_index(drop=True),
            self.embeddings[mask],
            [t for t, k in zip(self.tasks, mask, strict=True) if k],
            self.labels[mask],
            self.models,
        )


def prepare(
    bench: Benchmark,
    cache_dir: Path,
    encoder: EncoderConfig | None = None,
    models: list[str] | None = None,
    *,
    device: str | None = None,
) -> TrainingSet:
    """Embed (through the cache) and tabulate a benchmark for training."""
    # a distilled static model is cached beside the embedding cache (<state>/cache/static)
    enc = Encoder(
        encoder or EncoderConfig(), device=device, static_cache_dir=Path(cache_dir).parent / "static"
    )
    cache = EmbeddingCache(cache_dir, enc)
    f = bench.frame
    emb = cache.embed(f["prompt"].tolist(), f["prompt_hash"].tolist())
    models = models or bench.models
    labels = bench.labels(models).to_numpy(dtype=np.float64)
    return TrainingSet(f, emb, f["task"].tolist(), labels, list(models))


def _prior(y: np.ndarray) -> np.ndarray:
    """Mean label per model (NaN where a model has no label in ``y``)."""
    have = (~np.isnan(y)).sum(axis=0)
    total = np.nansum(y, axis=0)
    return np.where(have > 0, total / np.maximum(have, 1), np.nan)


def _torch_fit(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    init: dict[str, np.ndarray] | None = None,
    emb_dim: int | None = None,
) -> dict[str, np.ndarray]:
    import torch

    device = pick_device(cfg.device)
    threads = torch.get_num_threads()
    if device == "cpu":
        # the head's matrices are small: one thread avoids OpenMP spin contention on shared cores
        torch.set_num_threads(1)
    try:
        if kind != "mlp" or cfg.ensemble == 1:
            return _torch_fit_on(kind, x, y, cfg, device, init, emb_dim)
        members = [
            _torch_fit_on(
                kind,
                x,
                y,
                cfg.model_copy(update={"seed": cfg.seed + k}),
                device,
                _member_init(init, k, cfg),
                emb_dim,
            )
            for k in range(cfg.ensemble)
        ]
        return _stack_members(members)
    finally:
        torch.set_num_threads(threads)


def _stack_members(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """K MLPs as one MLP whose logits are their mean: hidden layers side by side, output weights
    stacked and divided by K, output bias averaged. The artefact format and serving are unchanged."""
    k = len(members)
    return {
        "w1": np.concatenate([m["w1"] for m in members], axis=1),
        "b1": np.concatenate([m["b1"] for m in members]),
        "w2": np.concatenate([m["w2"] for m in members], axis=0) / k,
        "b2": np.mean([m["b2"] for m in members], axis=0),
    }


def _member_init(
    init: dict[str, np.ndarray] | None, k: int, cfg: TrainConfig
) -> dict[str, np.ndarray] | None:
    """Member ``k``'s warm start: its slice of a champion ensemble of the same size, else the
    champion itself (a single MLP), else None."""
    if init is None:
        return None
    h = cfg.hidden
    if init["w1"].shape[1] == h * cfg.ensemble:
        sl = slice(k * h, (k + 1) * h)
        return {
            "w1": init["w1"][:, sl],
            "b1": init["b1"][sl],
            "w2": init["w2"][sl] * cfg.ensemble,
            "b2": init["b2"],
        }
    return init


def _torch_fit_on(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    device: str,
    init: dict[str, np.ndarray] | None = None,
    emb_dim: int | None = None,
) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(cfg.seed)
    d, m = x.shape[1], y.shape[1]
    prior = _prior(y)
    prior = np.where(np.isnan(prior), 0.5, prior)
    b0 = torch.tensor(
        np.log(np.clip(prior, 1e-3, 1 - 1e-3) / (1 - np.clip(prior, 1e-3, 1 - 1e-3))), dtype=torch.float32
    )
    if kind == "mlp":
        net = torch.nn.Sequential(
            torch.nn.Linear(d, cfg.hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(cfg.dropout),
            torch.nn.Linear(cfg.hidden, m),
        )
        with torch.no_grad():
            net[3].bias.copy_(b0)
            shapes_fit = init is not None and init["w1"].shape == (d, cfg.hidden)
            if shapes_fit and init["w2"].shape == (cfg.hidden, m):
                # warm start (the closed loop): continue from the champion's weights
                net[0].weight.copy_(torch.tensor(init["w1"].T))
                net[0].bias.copy_(torch.tensor(init["b1"]))
                net[3].weight.copy_(torch.tensor(init["w2"].T))
                net[3].bias.copy_(torch.tensor(init["b2"]))
    elif kind == "mf":

        class MF(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.proj = torch.nn.Linear(d, cfg.rank, bias=False)
                self.model_emb = torch.nn.Parameter(torch.randn(m, cfg.rank) * 0.1 + 1.0)
                self.w = torch.nn.Parameter(torch.randn(cfg.rank) * 0.1)
                self.bias = torch.nn.Parameter(b0.clone())
                self.drop = torch.nn.Dropout(cfg.dropout)

            def forward(self, xb: torch.Tensor) -> torch.Tensor:
                q = self.drop(self.proj(xb))
                return (q[:, None, :] * self.model_emb[None]) @ self.w + self.bias

        net = MF()
    else:  # pragma: no cover - guarded by fit_head
        raise ValueError(kind)
    net = net.to(device)
    xt = torch.tensor(x, dtype=torch.float32, device=device)
    mask = ~np.isnan(y)
    yt = torch.tensor(np.nan_to_num(y), dtype=torch.float32, device=device)
    mt = torch.tensor(mask, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x)
    steps = cfg.epochs * max(1, (n + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    # task features are the columns after the embedding; blank them on a share of each batch
    drop_tasks = cfg.task_dropout > 0 and emb_dim is not None and emb_dim < d
    net.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            xb = xt[idx]
            if drop_tasks:
                blank = (torch.rand(len(idx), generator=gen) < cfg.task_dropout).to(device)
                xb = xb.clone()
                xb[blank, emb_dim:] = 0.0
            logits = net(xb)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, yt[idx], weight=mt[idx], reduction="sum"
            )
            loss = loss / mt[idx].sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    if kind == "mlp":
        return {
            "w1": net[0].weight.detach().cpu().numpy().T,
            "b1": net[0].bias.detach().cpu().numpy(),
            "w2": net[3].weight.detach().cpu().numpy().T,
            "b2": net[3].bias.detach().cpu().numpy(),
        }
    return {
        "proj": net.proj.weight.detach().cpu().numpy().T,
        "model_emb": net.model_emb.detach().cpu().numpy(),
        "w": net.w.detach().cpu().numpy(),
        "bias": net.bias.detach().cpu().numpy(),
    }


def fit_head(
    kind: str,
    emb: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    init: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit one head; returns (weights, options)."""
    if kind not in HEADS:
        raise ValueError(f"unknown router kind {kind!r} (known: {sorted(HEADS)})")
    if kind == "random":
        return {"n_models": np.array([y.shape[1]], dtype=np.float32)}, {"seed": cfg.seed}
    if kind == "knn":
        prior = _prior(y)
        return (
            {
                "vectors": emb.astype(np.float32),
                "labels": y.astype(np.float32),
                "prior": np.where(np.isnan(prior), 0.5, prior).astype(np.float32),
            },
            {"k": cfg.k, "temperature": cfg.knn_temperature},
        )
    return _torch_fit(kind, x, y, cfg, init, emb_dim=emb.shape[1]), {}


def head_logits(
    kind: str, params: dict[str, np.ndarray], options: dict[str, Any], x: np.ndarray, chunk: int = 2048
) -> np.ndarray:
    """Raw logits of a fitted head (chunked so kNN stays in memory)."""
    head = make_head(kind, params, options)
    return np.concatenate([head.logits(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def score_ranges(
    kind: str,
    params: dict[str, np.ndarray],
    options: dict[str, Any],
    calibration: Calibration,
    ts: TrainingSet,
    vocab: list[str],
) -> dict[str, list[float]]:
    """Per model, the lowest and highest score the saved router serves on its own training rows,
    tagged and untagged: the band a replica's smoke check holds a loaded router to."""
    blank: list[str | None] = [None] * len(ts.tasks)

    def served_scores(tasks: list[str] | list[str | None]) -> np.ndarray:
        x = features(ts.embeddings, tasks, vocab)
        return calibration.apply(head_logits(kind, params, options, x), tasks)

    served = np.vstack([served_scores(ts.tasks), served_scores(blank)])
    return {m: [float(served[:, j].min()), float(served[:, j].max())] for j, m in enumerate(ts.models)}


def task_vocab(tasks: list[str]) -> list[str]:
    return sorted(set(tasks))


def oof_logits(
    ts: TrainingSet,
    cfg: TrainConfig,
    folds: np.ndarray,
    vocab: list[str] | None = None,
    init: dict[str, np.ndarray] | None = None,
    *,
    unknown_tasks: bool = False,
) -> np.ndarray:
    """Out-of-fold raw logits for every row (each fold predicted by a head that never saw it).
    ``unknown_tasks``: test rows are scored with blank task features, as a task the head was
    not trained on is served (use with :func:`training.splits.task_folds`)."""
    vocab = vocab if vocab is not None else task_vocab(ts.tasks)
    x = features(ts.embeddings, ts.tasks, vocab)
    x_test = features(ts.embeddings, [None] * len(ts.tasks), vocab) if unknown_tasks else x
    out = np.zeros(ts.labels.shape, dtype=np.float64)
    for f in np.unique(folds):
        test = folds == f
        train = train_mask(ts.frame["prompt_hash"], test)
        params, opts = fit_head(cfg.kind, ts.embeddings[train], x[train], ts.labels[train], cfg, init)
        out[test] = head_logits(cfg.kind, params, opts, x_test[test])
    return out


def grouped_oof_logits(ts: TrainingSet, cfg: TrainConfig, k: int | None = None) -> np.ndarray | None:
    """Leave-tasks-out logits: each row scored by a head trained without its task, with blank
    task features (how an unseen task is served). None when there are fewer than two tasks."""
    k = min(k or cfg.cold_folds, len(set(ts.tasks)))
    if k < 2:
        return None
    return oof_logits(ts, cfg, task_folds(ts.tasks, k, cfg.seed), unknown_tasks=True)


def fit_cold_start(
    logits: np.ndarray,
    labels: np.ndarray,
    models: list[str],
    prices: np.ndarray,
    strong_model: str,
    *,
    rule: str = "gap",
    confidence: float = 0.0,
    tasks: list[str] | None = None,
    coverage: float = 0.0,
) -> tuple[dict[str, Platt], ThresholdTable]:
    """The cold-start calibration from leave-tasks-out ``logits``: Platt per model on the rows
    graded for the strong model and another, and one threshold table over all of them (the
    rows pool many held-out tasks, so the table is a target kept on average over new tasks;
    ``coverage`` with ``tasks``: on that share of the held-out tasks each, see
    :func:`services.router.calibration.fit_table`)."""
    strong = models.index(strong_model)
    platt, base = _comparable_platt(logits, labels, models, strong)
    a = np.array([platt[m].a for m in models])
    b = np.array([platt[m].b for m in models])
    probs = sigmoid(a * logits + b)
    table = fit_table(
        probs,
        labels,
        prices,
        models,
        strong,
        rule=rule,
        confidence=confidence,
        groups=tasks,
        coverage=coverage,
    )
    return platt, table.model_copy(update={"candidates": _graded_candidates(labels, base, models, tasks)})


def _comparable_platt(
    logits: np.ndarray, labels: np.ndarray, models: list[str], strong: int
) -> tuple[dict[str, Platt], np.ndarray]:
    """Platt per model on the rows graded for the strong model and another (all rows if none):
    rows graded for one model only (live outcomes of a drifting task) would drag the fit."""
    both = comparable_rows(labels, strong)
    base = both if both.any() else np.ones(len(labels), bool)
    return {m: fit_platt(logits[base, j], labels[base, j]) for j, m in enumerate(models)}, base


def _graded_candidates(
    labels: np.ndarray, base: np.ndarray, models: list[str], tasks: list[str] | np.ndarray | None = None
) -> list[str]:
    """Models graded on at least half of the ``base`` rows: the candidates of a shared table (rows
    graded for one model only would crowd out every model but the one the router usually picks).
    With ``tasks``, each task weighs the same: a retrain that loads every row of one big task
    (a RouterBench task graded for 11 models) must not make that task's models the candidates
    of every task the shared table serves (MMLU subjects with answers of two)."""
    graded = ~np.isnan(labels[base])
    if tasks is not None and base.any():
        t = np.asarray(tasks)[base]
        share = np.mean([graded[t == u].mean(axis=0) for u in np.unique(t)], axis=0)
    else:
        share = graded.mean(axis=0)
    return [m for m, g in zip(models, share >= 0.5, strict=True) if g]


def fit_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    tasks: list[str],
    models: list[str],
    prices: np.ndarray,
    strong_model: str,
    *,
    rule: str = "gap",
    confidence: float = 0.0,
    min_table_rows: int = MIN_TASK_ROWS,
) -> Calibration:
    """Platt per model (and per task where it has rows), then threshold tables on the result
    (``confidence``: see :func:`services.router.calibration.fit_table`)."""
    strong = models.index(strong_model)
    # The global Platt serves every task without its own: fit it on the comparable rows. Rows
    # graded for one model only (live outcomes of a drifting task) belong to their task's own
    # Platt; in the global fit they dragged the small tasks' calibration towards the drift.
    platt, base = _comparable_platt(logits, labels, models, strong)
    both = comparable_rows(labels, strong)
    tasks_arr = np.array(tasks)
    task_platt: dict[str, dict] = {}
    for t in sorted(set(tasks)):
        rows = tasks_arr == t
        if rows.sum() < MIN_TASK_ROWS:
            continue
        task_platt[t] = {
            m: fit_platt(logits[rows, j], labels[rows, j])
            for j, m in enumerate(models)
            if (~np.isnan(labels[rows, j])).sum() >= MIN_TASK_ROWS
        }
    placeholder = ThresholdTable(targets=[1.0], thresholds=[0.0], candidates=list(models), n=0)
    cal = Calibration(
        models=models,
        strong_model=strong_model,
        rule=rule,
        platt=platt,
        task_platt=task_platt,
        global_table=placeholder,
    )
    probs = cal.apply(logits, tasks)
    own = [t for t in sorted(set(tasks)) if ((tasks_arr == t) & both).sum() >= min_table_rows]
    # The global table serves the tasks without their own table (and unknown ones): fit it on
    # their rows, not on the mix, whose big tasks would set a threshold that suits them instead.
    rest = ~np.isin(tasks_arr, own)
    use = rest if (rest & both).sum() >= min_table_rows else np.ones(len(tasks_arr), bool)
    global_table = fit_table(
        probs[use], labels[use], prices, models, strong, rule=rule, confidence=confidence
    )
    global_table = global_table.model_copy(
        update={"candidates": _graded_candidates(labels, base, models, tasks_arr)}
    )
    task_tables = {}
    for t in own:
        rows = tasks_arr == t
        task_tables[t] = fit_table(
            probs[rows], labels[rows], prices, models, strong, rule=rule, confidence=confidence
        )
    return cal.model_copy(update={"global_table": global_table, "task_tables": task_tables})


def train_router(
    ts: TrainingSet,
    cfg: TrainConfig,
    catalog: Catalog,
    out_dir: Path,
    *,
    encoder: EncoderConfig,
    encoder_sha: str | None,
    extra: dict[str, Any] | None = None,
    init: dict[str, np.ndarray] | None = None,
    static_cache_dir: Path | None = None,
) -> tuple[Manifest, dict[str, float]]:
    """Fit calibration on out-of-fold predictions, refit on all rows, save the artefact.
    ``init``: head weights to start from (warm start; mlp, shapes must match the task vocabulary).
    Only the final fit starts from ``init``, and only for ``cfg.warm_epochs`` epochs:
    - the fold models start cold: the champion was trained on these rows, so fold models started
      from it would "predict" rows they have already seen, and a calibration fitted on such leaky
      scores trusts the cheap model too much;
    - a warm start that then trains as long as a cold fit ends up far more confident than the
      cold fold models the calibration was fitted on. In the demo, such challengers lost 4.4
      points of quality on the small MMLU subjects (0.917 vs 0.962 of GPT-4's) where the same
      data trained cold passed the gate.
    ``static_cache_dir``: where the static encoder's distilled model is cached (static backend
    only; it is copied into the artefact; default ``.state/cache/static``)."""
    t0 = time.perf_counter()
    static_model = None
    if encoder.backend == "static":
        # resolved first: the same files the embeddings came from (a cache hit after prepare)
        static_model = Encoder(encoder, static_cache_dir=static_cache_dir).static_files
    # the ONNX export (cached by now) goes into the artefact, so serving never needs torch for it
    onnx_model = Encoder(encoder, device="cpu").onnx_files if encoder.backend == "onnx" else None
    unknown = [m for m in ts.models if m not in catalog.model_ids]
    if unknown:
        raise ValueError(f"models {unknown} are not in the catalog")
    vocab = task_vocab(ts.tasks)
    prices = np.array([catalog.blended_price(m) for m in ts.models])
    folds = kfold(ts.frame["prompt_hash"], cfg.calibration_folds, cfg.seed)
    oof = oof_logits(ts, cfg, folds, vocab, None)
    t_oof = time.perf_counter() - t0
    # what the per-task and the cold-start calibrations share
    fit = {
        "models": ts.models,
        "prices": prices,
        "strong_model": catalog.strong_model,
        "rule": cfg.rule,
        "confidence": cfg.threshold_confidence,
    }
    calibration = fit_calibration(oof, ts.labels, ts.tasks, min_table_rows=cfg.min_table_rows, **fit)
    t_cold = 0.0
    if cfg.cold_start:
        t1 = time.perf_counter()
        g_oof = grouped_oof_logits(ts, cfg)
        if g_oof is not None:
            platt_u, table_u = fit_cold_start(
                g_oof, ts.labels, tasks=ts.tasks, coverage=cfg.cold_start_coverage, **fit
            )
            calibration = calibration.model_copy(
                update={"known_tasks": vocab, "unknown_platt": platt_u, "unknown_table": table_u}
            )
        t_cold = time.perf_counter() - t1
    x = features(ts.embeddings, ts.tasks, vocab)
    final = cfg if init is None else cfg.model_copy(update={"epochs": min(cfg.warm_epochs, cfg.epochs)})
    params, opts = fit_head(cfg.kind, ts.embeddings, x, ts.labels, final, init)
    cascade = fit_cascade(ts, cfg.cascade_model, seed=cfg.seed) if cfg.cascade_model else None
    if cascade is not None:
        table = fit_cascade_table(ts, cfg.cascade_model, catalog.strong_model, seed=cfg.seed)
        cascade = (cascade[0].model_copy(update={"table": table}), cascade[1])
    elapsed = time.perf_counter() - t0
    metrics = {
        "train_seconds": elapsed,
        "oof_seconds": t_oof,
        "cold_start_seconds": t_cold,
        "rows": float(len(ts.frame)),
        "oof_brier": float(np.nanmean((sigmoid(oof) - ts.labels) ** 2)),
    }
    training = {
        "config": cfg.model_dump(),
        "rows": len(ts.frame),
        "datasets": sorted(ts.frame["dataset"].unique()),
        "metrics": metrics,
        "score_ranges": score_ranges(cfg.kind, params, opts, calibration, ts, vocab),
        **(extra or {}),
    }
    manifest = save_router(
        out_dir,
        kind=cfg.kind,
        models=ts.models,
        task_vocab=vocab,
        head_params=params,
        calibration=calibration,
        encoder=encoder,
        encoder_weights_sha256=encoder_sha,
        head_options=opts,
        cascade=cascade,
        training=training,
        static_model=static_model,
        onnx_model=onnx_model,
    )
    log.info("trained %s on %d rows in %.1fs", manifest.version, len(ts.frame), elapsed)
    return manifest, metrics

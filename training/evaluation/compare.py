"""Compare two routers on held-out data: the one place that does it.

Each router is measured the way it will serve (:func:`evaluate_router`): calibrated scores → the
policy at the quality target → the chosen model's real graded answer. :func:`compare` measures
the challenger and the champion on the same rows and asks :func:`training.evaluation.gate.gate`
for the verdict; :class:`Comparison` writes it (``gate.json``, ``gate.png``) and flattens it into
MLflow metrics. The retrain worker and ``bench/loop_gate_check.py`` call it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from services.catalog import Catalog
from services.router.calibration import comparable_rows
from services.router.heads import features
from services.router.policy import choose

from ..data import GPT4, MIXTRAL
from ..train import TrainingSet
from .gate import Evaluation, GateConfig, RowOutcomes, TaskMetrics, Verdict, gate, metrics_of
from .metrics import ece, two_tier_curve

log = logging.getLogger(__name__)


def _task_metrics(labels: np.ndarray, chosen: np.ndarray, prices: np.ndarray, strong: int) -> TaskMetrics:
    rows = np.arange(len(chosen))
    got = labels[rows, chosen]
    ys = labels[:, strong]
    keep = ~np.isnan(got) & ~np.isnan(ys)
    n = int(keep.sum())
    if n == 0:
        return TaskMetrics.unmeasured()
    q, qs = float(got[keep].mean()), float(ys[keep].mean())
    return TaskMetrics(
        n=n,
        quality=q,
        strong_quality=qs,
        quality_ratio=q / qs if qs > 0 else 1.0,
        cost_ratio=float(prices[chosen[keep]].mean() / prices[strong]),
        strong_share=float((chosen[keep] == strong).mean()),
    )


def evaluate_router(
    router, holdout: TrainingSet, catalog: Catalog, quality_target: float = 0.95
) -> Evaluation:  # noqa: ANN001
    """The router's policy on ``holdout`` (embeddings precomputed): overall and per task quality,
    cost ratio, strong share, two-tier APGR and ECE. Only models graded on a row are candidates."""
    models = holdout.models
    r_models = list(router.models)
    missing = [m for m in models if m not in r_models]
    if missing:
        raise ValueError(f"router {router.version} does not score {missing}")
    x_idx = [r_models.index(m) for m in models]
    x = features(holdout.embeddings, holdout.tasks, router.manifest.task_vocab)
    logits = router.head.logits(x)
    probs = router.calibration.apply(logits, holdout.tasks)[:, x_idx]
    labels = holdout.labels
    prices = np.array([catalog.blended_price(m) for m in models])
    strong = models.index(catalog.strong_model)
    tasks = np.array(holdout.tasks)
    # as served: only the models calibrated for the row's task (its table's candidates) compete
    tables = {t: router.calibration.table(t)[0] for t in set(holdout.tasks)}
    rows_of = {t: np.array([m in set(tab.candidates) for m in models]) for t, tab in tables.items()}
    allowed = np.array([rows_of[t] for t in holdout.tasks], bool).reshape(labels.shape)
    allowed[:, models.index(catalog.strong_model)] = True
    p = np.where(np.isnan(labels) | ~allowed, np.nan, probs)
    thr = np.array([tables[t].threshold(quality_target) for t in holdout.tasks])
    # rows with no graded strong answer cannot be measured against the strong model, and rows
    # graded for one model only leave the router no choice (they would dilute every difference)
    measurable = comparable_rows(labels, strong)
    chosen = choose(p, prices, thr, strong=strong, rule=router.calibration.rule)
    overall = _task_metrics(labels[measurable], chosen[measurable], prices, strong)
    per_task = {}
    for t in sorted(set(holdout.tasks)):
        m = (tasks == t) & measurable
        if m.any():
            per_task[t] = _task_metrics(labels[m], chosen[m], prices, strong)
    apgr = float("nan")
    if MIXTRAL in models and GPT4 in models:
        si, wi = models.index(GPT4), models.index(MIXTRAL)
        two = ~np.isnan(labels[:, si]) & ~np.isnan(labels[:, wi])
        if two.sum() >= 10:
            apgr = two_tier_curve(probs[two, si] - probs[two, wi], labels[two, si], labels[two, wi]).apgr()
    rows = np.arange(len(chosen))
    got, ys = labels[rows, chosen], labels[:, strong]
    keep = measurable & ~np.isnan(got)
    frame = holdout.frame
    keys = frame["prompt_hash"] if "prompt_hash" in frame else pd.Series(np.arange(len(frame))).astype(str)
    groups = frame["dataset"] if "dataset" in frame else pd.Series(holdout.tasks)
    per_row = RowOutcomes(
        keys=[str(k) for k in np.asarray(keys)[keep]],
        tasks=[str(t) for t in tasks[keep]],
        groups=[str(g) for g in np.asarray(groups)[keep]],
        quality=got[keep].tolist(),
        strong=ys[keep].tolist(),
        cost=(prices[chosen[keep]] / prices[strong]).tolist(),
    )
    return Evaluation(
        router_version=router.version,
        quality_target=quality_target,
        overall=overall,
        per_task=per_task,
        apgr=apgr,
        ece=ece(probs, labels),
        rows=per_row,
    )


@dataclass(frozen=True)
class Comparison:
    """A challenger against the champion (None: the first router) on the same held-out rows."""

    challenger: Evaluation
    champion: Evaluation | None
    verdict: Verdict
    drift_tasks: list[str]

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics of both evaluations and the verdict."""
        return {
            **metrics_of("challenger", self.challenger),
            **(metrics_of("champion", self.champion) if self.champion else {}),
            "gate.passed": float(self.verdict.passed),
        }

    def write(self, out_dir: Path) -> list[Path]:
        """``gate.json`` (verdict and both evaluations) and ``gate.png`` (per task) in ``out_dir``."""
        js = out_dir / "gate.json"
        js.write_text(
            json.dumps(
                {
                    "verdict": self.verdict.model_dump(),
                    "challenger": self.challenger.model_dump(),
                    "champion": self.champion.model_dump() if self.champion else None,
                },
                indent=1,
                default=str,
            ),
            encoding="utf-8",
        )
        png = plot_comparison(self.champion, self.challenger, self.drift_tasks, out_dir / "gate.png")
        return [js, png]


def compare(
    challenger,  # noqa: ANN001 - a loaded router (services.router.artifact)
    champion,  # noqa: ANN001 - the serving one, or None for the first router
    holdout: TrainingSet,
    catalog: Catalog,
    cfg: GateConfig,
    drift_tasks: list[str] | tuple[str, ...] = (),
) -> Comparison:
    """Measure both routers on ``holdout`` at ``cfg.quality_target`` and gate the challenger."""
    ev_new = evaluate_router(challenger, holdout, catalog, cfg.quality_target)
    ev_old = evaluate_router(champion, holdout, catalog, cfg.quality_target) if champion is not None else None
    return Comparison(ev_new, ev_old, gate(ev_new, ev_old, cfg, drift_tasks), list(drift_tasks))


def plot_comparison(
    champion: Evaluation | None, challenger: Evaluation, drift_tasks: list[str], path: Path
) -> Path:
    """Bar chart of per-task quality ratio and cost ratio, champion vs challenger (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(challenger.per_task, key=lambda t: (t not in drift_tasks, -challenger.per_task[t].n))[:25]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(tasks) * 0.5), 8), sharex=True)
    x = np.arange(len(tasks))
    for ax, key, title in (
        (axes[0], "quality_ratio", "quality / strong model"),
        (axes[1], "cost_ratio", "cost / strong model"),
    ):
        if champion is not None:
            ax.bar(
                x - 0.2,
                [
                    getattr(champion.per_task.get(t), key, np.nan) if t in champion.per_task else np.nan
                    for t in tasks
                ],
                0.4,
                label=f"champion {champion.router_version}",
            )
        ax.bar(
            x + 0.2,
            [getattr(challenger.per_task[t], key) for t in tasks],
            0.4,
            label=f"challenger {challenger.router_version}",
        )
        if key == "quality_ratio":
            ax.axhline(challenger.quality_target, color="grey", lw=0.8)
        ax.set_ylabel(title)
        ax.legend(fontsize=8)
    axes[1].set_xticks(x, [t + (" *" if t in drift_tasks else "") for t in tasks], rotation=70, fontsize=7)
    axes[0].set_title("gate: per task at the quality target (* = drifting)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

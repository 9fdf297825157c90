"""Calibration: raw head logits → calibrated P(acceptable), and quality targets → thresholds.

Two parts, both fitted on out-of-fold predictions of the training data and stored as JSON in the
router artefact:

- score calibration: Platt scaling (``sigmoid(a·z + b)``) per model, and per (task, model) where
  the task has enough rows; otherwise the global fit is used.
- cold start: a task the router was never trained on (or no task tag) gets its own Platt fit and
  threshold table, ``unknown_platt``/``unknown_table``, fitted on leave-tasks-out predictions
  (every row scored by a head that never saw its task, with the task features blank, exactly as
  an unseen task is served), so the policy keeps its target on traffic unlike the training data.
- threshold tables: for each task (and globally) a curve from ``quality_target`` (share of the
  strong model's quality to keep) to the threshold of the routing rule
  (:func:`services.router.policy.choose`). The threshold grid is the quantiles of the observed
  score gaps, as RouteLLM calibrates its thresholds on data.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .heads import sigmoid
from .policy import choose

MIN_TASK_ROWS = 120
TARGETS = [round(x, 3) for x in np.linspace(0.5, 1.0, 101)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Platt(_Model):
    a: float = 1.0
    b: float = 0.0


class ThresholdTable(_Model):
    """``thresholds[i]`` is the largest threshold that still kept ``targets[i]`` on the data."""

    targets: list[float]
    thresholds: list[float]
    candidates: list[str]
    n: int = Field(ge=0)

    def threshold(self, quality_target: float) -> float:
        return float(np.interp(quality_target, self.targets, self.thresholds))


class Calibration(_Model):
    """Everything the policy needs besides the scores; JSON in the artefact."""

    models: list[str]
    strong_model: str
    rule: str = "gap"
    platt: dict[str, Platt] = Field(default_factory=dict)
    task_platt: dict[str, dict[str, Platt]] = Field(default_factory=dict)
    global_table: ThresholdTable
    task_tables: dict[str, ThresholdTable] = Field(default_factory=dict)
    known_tasks: list[str] = Field(
        default_factory=list, description="Tasks the head was trained on (the rest is cold start)."
    )
    unknown_platt: dict[str, Platt] = Field(default_factory=dict)
    unknown_table: ThresholdTable | None = None

    def is_unknown(self, task: str | None) -> bool:
        """Whether ``task`` is served by the cold-start calibration (when the router has one)."""
        return self.unknown_table is not None and (task is None or task not in self.known_tasks)

    def apply(self, logits: np.ndarray, tasks: Sequence[str | None]) -> np.ndarray:
        """Calibrated probabilities for raw ``logits`` (n, n_models)."""
        base_a = np.array([self.platt.get(m, Platt()).a for m in self.models])
        base_b = np.array([self.platt.get(m, Platt()).b for m in self.models])
        a = np.tile(base_a, (len(tasks), 1))
        b = np.tile(base_b, (len(tasks), 1))
        rows: dict[str, list[int]] = {}
        cold = [r for r, t in enumerate(tasks) if self.is_unknown(t)]
        if cold and self.unknown_platt:
            a[cold] = [self.unknown_platt.get(m, Platt()).a for m in self.models]
            b[cold] = [self.unknown_platt.get(m, Platt()).b for m in self.models]
        for r, t in enumerate(tasks):
            if t is not None and t in self.task_platt:
                rows.setdefault(t, []).append(r)
        for t, idx in rows.items():
            for j, m in enumerate(self.models):
                tp = self.task_platt[t].get(m)
                if tp is not None:
                    a[idx, j], b[idx, j] = tp.a, tp.b
        return sigmoid(a * logits + b)

    def table(self, task: str | None) -> tuple[ThresholdTable, bool]:
        """The task's threshold table, the cold-start one for a task the router never saw, or the
        global one (flag: whether per-task)."""
        if task is not None and task in self.task_tables:
            return self.task_tables[task], True
        if self.is_unknown(task):
            return self.unknown_table, False
        return self.global_table, False


def fit_platt(z: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, iters: int = 50) -> Platt:
    """Platt scaling by Newton's method on soft labels ``y`` in [0, 1], shrunk towards (1, 0)."""
    z, y = np.asarray(z, float), np.asarray(y, float)
    keep = ~np.isnan(y)
    z, y = z[keep], y[keep]
    if len(z) < 10 or np.all(y == y[0]):
        return Platt()
    a, b = 1.0, 0.0
    n = len(z)
    for _ in range(iters):
        p = sigmoid(a * z + b)
        w = p * (1 - p)
        g = np.array([np.sum((p - y) * z) / n + l2 * (a - 1), np.sum(p - y) / n + l2 * b])
        h = np.array(
            [[np.sum(w * z * z) / n + l2, np.sum(w * z) / n], [np.sum(w * z) / n, np.sum(w) / n + l2]]
        )
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return Platt(a=float(a), b=float(b))


def quality_curve(
    scores: np.ndarray,
    labels: np.ndarray,
    prices: np.ndarray,
    strong: int,
    thresholds: np.ndarray,
    *,
    rule: str = "gap",
) -> tuple[np.ndarray, np.ndarray]:
    """Mean quality and mean price of the routing rule at each threshold.

    ``scores``/``labels`` are (n, M) with NaN where a model is not a candidate for that row.
    """
    q = np.empty(len(thresholds))
    c = np.empty(len(thresholds))
    rows = np.arange(len(scores))
    for i, t in enumerate(thresholds):
        idx = choose(scores, prices, t, strong=strong, rule=rule)
        q[i] = np.nanmean(labels[rows, idx])
        c[i] = prices[idx].mean()
    return q, c


def threshold_grid(scores: np.ndarray, *, rule: str = "gap", levels: int = 200) -> np.ndarray:
    """Candidate thresholds: quantiles of the observed gaps (or scores), plus both extremes."""
    if rule == "gap":
        vals = (np.nanmax(scores, axis=1, keepdims=True) - scores)[~np.isnan(scores)]
        lo, hi = -0.01, 1.01
    elif rule == "need":
        ref = np.nanmax(scores, axis=1, keepdims=True)
        vals = (ref * (1.0 - scores))[~np.isnan(scores)]
        lo, hi = -0.01, 1.01
    else:
        vals = scores[~np.isnan(scores)]
        lo, hi = 1.01, -0.01
    qs = np.quantile(vals, np.linspace(0, 1, levels)) if len(vals) else np.array([])
    grid = np.unique(np.concatenate([[lo, hi], qs]))
    return grid[::-1] if rule == "absolute" else grid


def _bound_terms(
    scores: np.ndarray, labels: np.ndarray, prices: np.ndarray, strong: int, grid: np.ndarray, rule: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, int]:
    """Per threshold: mean and variance of the chosen model's correctness, its covariance with
    the strong model's; and the strong model's mean and variance (rows = comparable rows)."""
    rows = np.arange(len(scores))
    ys = labels[:, strong]
    mq, vq, cqs = (np.empty(len(grid)) for _ in range(3))
    for i, t in enumerate(grid):
        q = labels[rows, choose(scores, prices, t, strong=strong, rule=rule)]
        mq[i], vq[i] = q.mean(), q.var()
        cqs[i] = ((q - q.mean()) * (ys - ys.mean())).mean()
    return mq, vq, cqs, float(ys.mean()), float(ys.var()), len(scores)


def _group_ratios(
    scores: np.ndarray,
    labels: np.ndarray,
    prices: np.ndarray,
    strong: int,
    grid: np.ndarray,
    rule: str,
    groups: np.ndarray,
) -> np.ndarray:
    """(threshold, group): each group's quality as a share of the strong model's on its rows."""
    names = sorted(set(groups.tolist()))
    members = [groups == n for n in names]
    ref = np.array([max(np.nanmean(labels[m, strong]), 1e-9) for m in members])
    rows = np.arange(len(scores))
    out = np.empty((len(grid), len(names)))
    for i, t in enumerate(grid):
        got = labels[rows, choose(scores, prices, t, strong=strong, rule=rule)]
        out[i] = [np.nanmean(got[m]) for m in members] / ref
    return out


def comparable_rows(labels: np.ndarray, strong: int) -> np.ndarray:
    """Rows graded for the strong model and at least one other model (n, M labels, NaN = ungraded)."""
    graded = ~np.isnan(labels)
    return graded[:, strong] & (graded.sum(axis=1) >= 2)


def fit_table(
    scores: np.ndarray,
    labels: np.ndarray,
    prices: np.ndarray,
    models: Sequence[str],
    strong: int,
    *,
    rule: str = "gap",
    targets: Sequence[float] = TARGETS,
    confidence: float = 0.0,
    groups: Sequence[str] | None = None,
    coverage: float = 0.0,
    tolerance: float = 0.015,
) -> ThresholdTable:
    """Per target, the cheapest threshold (first crossing from 'always strong') keeping it.

    ``confidence`` > 0: keep the target with that one-sided confidence, not on the point estimate.
    A threshold then qualifies only when the lower confidence bound of ``mean(q - target·s)`` over
    the rows (q: the chosen model's correctness, s: the strong model's) is >= 0. On a task with a
    few hundred rows the point estimate picks, by chance, thresholds that lose several points on
    new data; the bound makes the table as cautious as its data is thin.

    Only :func:`comparable_rows` measure what routing costs in quality: a row graded for one model
    only (live feedback on the model the router chose) would add the same quality at every
    threshold, or the same to the quality and the strong reference, and so loosen the threshold
    (selection bias). Without any comparable row, every row is used."""
    cand = ~np.all(np.isnan(labels), axis=0)
    keep = comparable_rows(labels, strong)
    g = np.asarray(groups) if groups is not None else None
    if keep.any():
        scores, labels = scores[keep], labels[keep]
        g = g[keep] if g is not None else None
    s = np.where(np.isnan(labels), np.nan, scores)
    grid = threshold_grid(s, rule=rule)
    # with a confidence bound, one pass over the grid gives the mean quality and its moments
    bound = _bound_terms(s, labels, prices, strong, grid, rule) if confidence > 0 and keep.any() else None
    quality = bound[0] if bound is not None else quality_curve(s, labels, prices, strong, grid, rule=rule)[0]
    ref = np.nanmean(labels[:, strong]) if not np.all(np.isnan(labels[:, strong])) else np.nanmax(quality)
    ratio = quality / max(ref, 1e-9)
    z = NormalDist().inv_cdf(confidence) if bound is not None else 0.0
    per_group = (
        _group_ratios(s, labels, prices, strong, grid, rule, g) if g is not None and coverage > 0 else None
    )
    out = []
    for target in targets:
        if bound is None:
            ok = ratio >= target - 1e-12
        else:
            mq, vq, cqs, ms, vs, n = bound
            mean = mq - target * ms
            var = np.maximum(vq + target**2 * vs - 2 * target * cqs, 0.0)
            ok = mean - z * np.sqrt(var / max(n - 1, 1)) >= -1e-12
        if per_group is not None:
            ok = ok & ((per_group >= target - tolerance - 1e-12).mean(axis=1) >= coverage - 1e-12)
        # first index where the quality falls below the target, walking from strong to cheap
        bad = np.flatnonzero(~ok)
        last = (bad[0] - 1) if len(bad) else len(grid) - 1
        out.append(float(grid[max(last, 0)]))
    return ThresholdTable(
        targets=list(targets),
        thresholds=out,
        candidates=[m for m, c in zip(models, cand, strict=True) if c],
        n=len(scores),
    )

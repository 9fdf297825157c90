"""The promotion gate: challenger vs champion on the same held-out data (pure logic, no I/O).

Both routers are measured by :func:`training.evaluation.compare.evaluate_router` on one held-out
split that includes the drifting tasks; this module only compares the two :class:`Evaluation` s:

1. per task: the challenger's quality (share of the strong model's quality kept by the policy at
   the quality target) is not worse than the champion's by more than that task's margin; tasks
   with too few held-out rows to be judged alone are judged together per dataset (``group:``);
2. each drifting task is repaired: its quality reaches ``quality_target - repair_margin``;
3. overall not worse: quality within ``overall_margin``, quality on the tasks that are not
   drifting within ``stable_margin`` (so a repair on a big drifting task cannot hide a loss on the
   others), APGR within ``apgr_margin``, cost per request on the tasks that are not drifting within
   ``cost_margin`` (relative; repairing a task may legitimately cost more on it);
4. calibration (ECE) not worse by more than ``ece_margin``.

Quality comparisons are paired: both routers are measured on the same held-out rows, so the
difference is computed row by row and a paired bootstrap over the rows gives its one-sided upper
confidence bound. A comparison fails only when the drop is beyond its margin *and* significant
(the upper bound at ``1 - alpha`` is below 0): on a slice of ~80 rows one answer moves the
quality by more than a point, and a point comparison failed good challengers on noise. Without
per-row outcomes (an :class:`Evaluation` built by hand) the comparison falls back to the point
estimate. A drop also fails only while the challenger is below the quality target: the target is
the user's contract, and a champion that over-delivers on a task (all of gsm8k to GPT-4, by the
noise of its threshold fit) must not forbid a challenger that meets the target for less.

The verdict lists every check with its numbers; ``reasons`` are the failed ones (or a summary of
a pass). A failing challenger is never promoted.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class TaskMetrics(BaseModel):
    """A router's policy at the quality target on one slice of the held-out data."""

    model_config = ConfigDict(frozen=True)

    n: int = Field(ge=0)
    quality: float = Field(description="Mean correctness of the chosen models' answers.")
    strong_quality: float = Field(description="Mean correctness of the strong model on the same rows.")
    quality_ratio: float = Field(description="quality / strong_quality (1.0 = as good as always-strong).")
    cost_ratio: float = Field(description="Mean price of the chosen model / the strong model's price.")
    strong_share: float = Field(description="Share of rows sent to the strong model.")

    @classmethod
    def unmeasured(cls) -> TaskMetrics:
        """A slice with no measurable row (every figure NaN)."""
        nan = float("nan")
        return cls(n=0, quality=nan, strong_quality=nan, quality_ratio=nan, cost_ratio=nan, strong_share=nan)


class RowOutcomes(BaseModel):
    """Per held-out row: its key (prompt hash), task, group (dataset), the correctness of the model
    the router chose and of the strong model. Two routers' rows pair up by key."""

    model_config = ConfigDict(frozen=True)

    keys: list[str]
    tasks: list[str]
    groups: list[str]
    quality: list[float]
    strong: list[float]


class Evaluation(BaseModel):
    """Everything the gate needs about one router on the held-out data."""

    model_config = ConfigDict(frozen=True)

    router_version: str
    quality_target: float
    overall: TaskMetrics
    per_task: dict[str, TaskMetrics]
    apgr: float = Field(
        description="Two-tier APGR (strong vs cheap) of the router's ranking; NaN if no such rows."
    )
    ece: float = Field(description="Expected calibration error of the calibrated scores.")
    rows: RowOutcomes | None = Field(
        default=None, exclude=True, description="Per-row outcomes for the paired comparisons."
    )


class GateConfig(BaseModel):
    """Margins of the gate (``SWITCHYARD_TRAIN_*`` settings feed these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality_target: float = Field(default=0.95, gt=0, le=1)
    task_margin: float = Field(default=0.03, ge=0, description="Allowed per-task quality_ratio drop.")
    task_margins: dict[str, float] = Field(default_factory=dict, description="Per-task overrides.")
    repair_margin: float = Field(default=0.05, ge=0, description="Drifting task must reach target - this.")
    overall_margin: float = Field(default=0.01, ge=0, description="Allowed overall quality_ratio drop.")
    stable_margin: float = Field(
        default=0.02, ge=0, description="Allowed quality_ratio drop on the non-drifting tasks together."
    )
    alpha: float = Field(
        default=0.05, gt=0, lt=0.5, description="A quality drop fails only if significant at this level."
    )
    bootstrap: int = Field(default=2000, ge=100, description="Paired bootstrap resamples.")
    apgr_margin: float = Field(default=0.05, ge=0)
    cost_margin: float = Field(default=0.25, ge=0, description="Allowed relative cost rise on stable tasks.")
    ece_margin: float = Field(default=0.03, ge=0)
    min_task_rows: int = Field(
        default=60,
        ge=1,
        description="Tasks with fewer held-out rows are gated together per dataset, not alone.",
    )
    first_min_quality: float = Field(
        default=0.85, ge=0, le=1, description="No champion yet: overall quality needed."
    )

    def margin(self, task: str) -> float:
        return self.task_margins.get(task, self.task_margin)


class Check(BaseModel):
    """One gate rule's outcome."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    detail: str


class Verdict(BaseModel):
    """The gate's decision with its reasons (logged to MLflow; a failed one is never promoted)."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str]
    checks: list[Check]
    challenger: str
    champion: str | None

    def summary(self) -> str:
        head = "PASS" if self.passed else "FAIL"
        return f"{head}: " + "; ".join(self.reasons)


def _nan(x: float) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


class Paired(BaseModel):
    """The challenger's quality_ratio minus the champion's on the same rows, with its one-sided
    upper confidence bound (paired bootstrap); ``upper`` is NaN without per-row outcomes."""

    model_config = ConfigDict(frozen=True)

    new: float
    old: float
    delta: float
    upper: float
    n: int

    def fails(self, margin: float, target: float) -> bool:
        """Worse beyond ``margin``, significantly, and below the quality ``target``."""
        beyond = self.delta < -margin - 1e-12
        significant = math.isnan(self.upper) or self.upper < 0
        return beyond and significant and self.new < target - 1e-12

    def text(self, alpha: float) -> str:
        bound = "" if math.isnan(self.upper) else f", {100 * (1 - alpha):.0f}% upper bound {self.upper:+.3f}"
        return f"{self.new:.3f} vs champion {self.old:.3f} (Δ {self.delta:+.3f}{bound}"


def paired(
    new: Evaluation,
    old: Evaluation,
    select,  # noqa: ANN001 - callable (task, group) -> bool, or None for every row
    cfg: GateConfig,
    *,
    fallback: tuple[TaskMetrics, TaskMetrics] | None = None,
) -> Paired | None:
    """Paired difference of quality_ratio on the rows ``select`` keeps (None when no row)."""
    if new.rows is None or old.rows is None:
        if fallback is None:
            return None
        a, b = fallback
        return Paired(
            new=a.quality_ratio,
            old=b.quality_ratio,
            delta=a.quality_ratio - b.quality_ratio,
            upper=float("nan"),
            n=min(a.n, b.n),
        )
    where = {k: i for i, k in enumerate(old.rows.keys)}
    pick_new, pick_old = [], []
    for i, (k, t, g) in enumerate(zip(new.rows.keys, new.rows.tasks, new.rows.groups, strict=True)):
        j = where.get(k)
        if j is not None and (select is None or select(t, g)):
            pick_new.append(i)
            pick_old.append(j)
    if not pick_new:
        return None
    qn = np.asarray(new.rows.quality)[pick_new]
    qo = np.asarray(old.rows.quality)[pick_old]
    st = np.asarray(new.rows.strong)[pick_new]
    ref = st.sum()
    if ref <= 0:
        return None
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(qn), size=(cfg.bootstrap, len(qn)))
    den = st[idx].sum(axis=1)
    diff = (qn - qo)[idx].sum(axis=1)
    boot = diff[den > 0] / den[den > 0]
    upper = float(np.quantile(boot, 1 - cfg.alpha)) if len(boot) else float("nan")
    return Paired(
        new=float(qn.sum() / ref),
        old=float(qo.sum() / ref),
        delta=float((qn - qo).sum() / ref),
        upper=upper,
        n=len(qn),
    )


def gate(
    challenger: Evaluation,
    champion: Evaluation | None,
    cfg: GateConfig,
    drift_tasks: list[str] | tuple[str, ...] = (),
) -> Verdict:
    """Compare ``challenger`` with ``champion`` (None: first model) under ``cfg``; see module doc."""
    checks: list[Check] = []
    drift = list(dict.fromkeys(drift_tasks))

    # 1. no task worse than the champion beyond its margin (small tasks: per dataset)
    if champion is not None:
        small: set[str] = set()
        for task in sorted(set(challenger.per_task) & set(champion.per_task)):
            new, old = challenger.per_task[task], champion.per_task[task]
            if min(new.n, old.n) < cfg.min_task_rows:
                small.add(task)
                continue
            m = cfg.margin(task)
            d = paired(challenger, champion, lambda t, g, task=task: t == task, cfg, fallback=(new, old))
            if d is None:
                continue
            checks.append(
                Check(
                    name=f"task:{task}",
                    passed=not d.fails(m, cfg.quality_target),
                    detail=f"task {task}: quality {d.text(cfg.alpha)}, margin {m:.3f}, n={d.n})",
                )
            )
        if challenger.rows is not None:
            groups = sorted(
                {g for t, g in zip(challenger.rows.tasks, challenger.rows.groups, strict=True) if t in small}
            )
            for group in groups:
                d = paired(
                    challenger,
                    champion,
                    lambda t, g, group=group: g == group and t in small and t not in drift,
                    cfg,
                )
                if d is None or d.n < cfg.min_task_rows:
                    continue
                checks.append(
                    Check(
                        name=f"group:{group}",
                        passed=not d.fails(cfg.task_margin, cfg.quality_target),
                        detail=f"small tasks of {group} together: quality {d.text(cfg.alpha)}, "
                        f"margin {cfg.task_margin:.3f}, n={d.n})",
                    )
                )

    # 2. drifting tasks repaired
    line = cfg.quality_target - cfg.repair_margin
    for task in drift:
        new = challenger.per_task.get(task)
        if new is None or new.n == 0:
            checks.append(
                Check(
                    name=f"repair:{task}",
                    passed=False,
                    detail=f"drifting task {task}: no held-out rows to verify the repair",
                )
            )
            continue
        ok = new.quality_ratio >= line - 1e-12
        before = champion.per_task.get(task) if champion is not None else None
        was = f", champion {before.quality_ratio:.3f}" if before is not None else ""
        checks.append(
            Check(
                name=f"repair:{task}",
                passed=ok,
                detail=f"drifting task {task}: quality {new.quality_ratio:.3f}{was} "
                f"(needs >= {line:.3f}, n={new.n})",
            )
        )

    # 3. overall not worse, and not worse on the tasks that are not drifting
    if champion is not None:
        d = paired(challenger, champion, None, cfg, fallback=(challenger.overall, champion.overall))
        if d is not None:
            checks.append(
                Check(
                    name="overall:quality",
                    passed=not d.fails(cfg.overall_margin, cfg.quality_target),
                    detail=f"overall quality {d.text(cfg.alpha)}, margin {cfg.overall_margin:.3f}, n={d.n})",
                )
            )
        d = paired(challenger, champion, lambda t, g: t not in drift, cfg)
        if d is not None and drift:
            checks.append(
                Check(
                    name="stable:quality",
                    passed=not d.fails(cfg.stable_margin, cfg.quality_target),
                    detail=f"quality on the non-drifting tasks {d.text(cfg.alpha)}, "
                    f"margin {cfg.stable_margin:.3f}, n={d.n})",
                )
            )
        if not (_nan(challenger.apgr) or _nan(champion.apgr)):
            ok = challenger.apgr >= champion.apgr - cfg.apgr_margin - 1e-12
            checks.append(
                Check(
                    name="overall:apgr",
                    passed=ok,
                    detail=f"APGR {challenger.apgr:.3f} vs champion {champion.apgr:.3f} "
                    f"(margin {cfg.apgr_margin:.3f})",
                )
            )
        stable = [t for t in set(challenger.per_task) & set(champion.per_task) if t not in drift]
        n_new = sum(challenger.per_task[t].n for t in stable)
        n_old = sum(champion.per_task[t].n for t in stable)
        if n_new and n_old:
            c_new = sum(challenger.per_task[t].cost_ratio * challenger.per_task[t].n for t in stable) / n_new
            c_old = sum(champion.per_task[t].cost_ratio * champion.per_task[t].n for t in stable) / n_old
            ok = c_new <= c_old * (1 + cfg.cost_margin) + 1e-12
            checks.append(
                Check(
                    name="overall:cost",
                    passed=ok,
                    detail=f"cost ratio on stable tasks {c_new:.3f} vs champion {c_old:.3f} "
                    f"(relative margin {cfg.cost_margin:.2f})",
                )
            )
        if not (_nan(challenger.ece) or _nan(champion.ece)):
            ok = challenger.ece <= champion.ece + cfg.ece_margin + 1e-12
            checks.append(
                Check(
                    name="calibration",
                    passed=ok,
                    detail=f"ECE {challenger.ece:.3f} vs champion {champion.ece:.3f} "
                    f"(margin {cfg.ece_margin:.3f})",
                )
            )
    else:
        ok = challenger.overall.quality_ratio >= cfg.first_min_quality - 1e-12
        checks.append(
            Check(
                name="overall:quality",
                passed=ok,
                detail=f"no champion: overall quality {challenger.overall.quality_ratio:.3f} "
                f"(needs >= {cfg.first_min_quality:.3f})",
            )
        )

    failed = [c.detail for c in checks if not c.passed]
    passed = not failed
    reasons = (
        failed
        if failed
        else [
            f"all {len(checks)} checks passed; overall quality {challenger.overall.quality_ratio:.3f} "
            f"at cost ratio "
            f"{challenger.overall.cost_ratio:.3f}"
            + (
                f" (champion {champion.overall.quality_ratio:.3f} at {champion.overall.cost_ratio:.3f})"
                if champion is not None
                else ""
            )
        ]
    )
    return Verdict(
        passed=passed,
        reasons=reasons,
        checks=checks,
        challenger=challenger.router_version,
        champion=champion.router_version if champion is not None else None,
    )


def metrics_of(prefix: str, ev: Evaluation) -> dict[str, float]:
    """Flat MLflow metrics of an evaluation (``<prefix>.overall.quality_ratio``, per task, ...)."""
    out: dict[str, float] = {f"{prefix}.apgr": ev.apgr, f"{prefix}.ece": ev.ece}
    for name, tm in [("overall", ev.overall), *((f"task.{t}", m) for t, m in ev.per_task.items())]:
        for k in ("quality_ratio", "cost_ratio", "strong_share", "quality"):
            out[f"{prefix}.{name}.{k}"] = float(getattr(tm, k))
    return {k: v for k, v in out.items() if not _nan(v)}

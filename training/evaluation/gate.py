"""The promotion gate: challenger vs champion on the same held-out data (pure logic, no I/O).

Both routers are measured by :func:`training.evaluation.compare.evaluate_router` on one held-out
split that includes the drifting tasks; this module only compares the two :class:`Evaluation` s.
The challenger passes when it is **not worse anywhere and better or cheaper somewhere**:

1. per task: the challenger's quality (share of the strong model's quality kept by the policy at
   the quality target) is not worse than the champion's by more than that task's margin; tasks
   with too few held-out rows to be judged alone are judged together per dataset (``group:``);
2. each drifting task is repaired: its quality reaches ``quality_target - repair_margin``;
3. overall not worse: quality within ``overall_margin``, quality on the tasks that are not
   drifting within ``stable_margin`` (so a repair on a big drifting task cannot hide a loss on the
   others), APGR within ``apgr_margin``, cost per request on the tasks that are not drifting within
   ``cost_margin`` (relative; repairing a task may legitimately cost more on it);
4. calibration (ECE) not worse by more than ``ece_margin``;
5. no over-delivery: on a task (or group) that is not drifting and where the champion already
   meets the quality target, the challenger does not cost more than ``overdelivery_margin``
   (cost-ratio points, significantly) without a significant quality gain, e.g. a repaired router
   that sends a whole task to GPT-4 where the cheap tier was fine;
6. a gain (``require_gain``): the challenger is significantly cheaper or significantly better on
   at least one task, group or overall (a task the retrain was asked for counts however small,
   since it is left out of its group), or repairs a drifting task that the champion left below
   ``quality_target - repair_margin``. A challenger that sends a task to the cheap tier at equal
   quality passes on this rule alone.

The statistics are paired: both routers answer the same held-out rows, so each slice's
differences are taken row by row, for quality (the difference of the quality ratios, challenger −
champion) and for cost (the mean difference of the cost ratios). Each difference gets one-sided
``1 - alpha`` bounds from a paired bootstrap over the rows (``bootstrap`` resamples) and an exact
sign test over the rows where the two routers differ (ties carry no information). A difference is
significant only when both agree: the bound excludes 0 and the sign test's p-value is below
``alpha``. The bootstrap alone is too eager on small slices (20 rows of which 3 differ, all one
way: the bootstrap bound excludes 0, the sign test gives p = 0.125), the sign test alone ignores
by how much. So a slice never fails, nor counts as a gain, by noise: one different answer on 20 or
80 rows is never significant.

A quality comparison fails only when the drop is beyond its margin (point estimate), significant,
*and* leaves the challenger below the quality target: the target is the user's contract, and a
champion that over-delivers on a task (all of gsm8k to GPT-4, by the noise of its threshold fit)
must not forbid a challenger that meets the target for less. Without per-row outcomes (an
:class:`Evaluation` built by hand) every comparison falls back to the point estimates.

The verdict lists every check with its numbers (``reasons`` are the failed ones, or a summary of
a pass) and, per task, group, overall and stable slice (:class:`Slice`), the rows, quality and cost
of both routers, the paired differences with their bounds and p-values, the outcome and its reason.
A failing challenger is never promoted.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import binom


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
    the router chose and of the strong model, and the cost ratio of the chosen model. Two routers'
    rows pair up by key."""

    model_config = ConfigDict(frozen=True)

    keys: list[str]
    tasks: list[str]
    groups: list[str]
    quality: list[float]
    strong: list[float]
    cost: list[float] = Field(
        default_factory=list,
        description="Price of the chosen model / the strong model's, per row ([]: not measured).",
    )


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
    overdelivery_margin: float = Field(
        default=0.15,
        ge=0,
        description="On a non-drifting task where the champion meets the target: allowed cost-ratio "
        "rise without a significant quality gain.",
    )
    require_gain: bool = Field(
        default=True,
        description="The challenger must be significantly cheaper or better somewhere, or repair a "
        "drifting task.",
    )

    def margin(self, task: str) -> float:
        return self.task_margins.get(task, self.task_margin)


class Check(BaseModel):
    """One gate rule's outcome."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    detail: str


def _nan(x: float) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def sign_test(pos: int, neg: int) -> float:
    """Exact one-sided sign test: the p-value of "``neg`` or more of the ``pos + neg`` untied pairs
    go one way" when either way is equally likely (ties carry no information). 1.0 without pairs."""
    n = pos + neg
    return 1.0 if n == 0 else float(binom.cdf(pos, n, 0.5))


class Paired(BaseModel):
    """One slice of the held-out rows, the challenger against the champion on the same rows.

    Quality: the quality ratio (sum of the chosen answers' correctness / sum of the strong model's)
    of each router and the difference (challenger − champion). Cost: the mean cost ratio (the
    chosen model's price / the strong model's) and its difference. With per-row outcomes
    (``exact``) each difference has one-sided ``1 - alpha`` bounds from a paired bootstrap over the
    rows and an exact sign test over the rows where the two routers differ; without them (an
    :class:`Evaluation` built by hand) only the point estimates (bounds and p-values NaN)."""

    model_config = ConfigDict(frozen=True)

    n: int
    exact: bool = Field(description="Per-row outcomes: bounds and tests, not only point estimates.")
    new: float
    old: float
    delta: float
    lower: float = Field(description="Lower bound of the quality difference (NaN without rows).")
    upper: float = Field(description="Upper bound of the quality difference (NaN without rows).")
    p_worse: float = Field(description="Sign test: the challenger's answers worse (NaN without rows).")
    p_better: float = Field(description="Sign test: the challenger's answers better (NaN without rows).")
    cost_new: float
    cost_old: float
    cost_delta: float
    cost_lower: float
    cost_upper: float
    p_pricier: float
    p_cheaper: float

    # -- significance (a point estimate decides only without per-row outcomes) --------------------
    def worse(self, alpha: float) -> bool:
        """Quality significantly lower: the upper bound below 0 *and* the sign test at ``alpha``."""
        if not self.exact:
            return self.delta < -1e-12
        return self.upper < 0 and self.p_worse < alpha

    def better(self, alpha: float) -> bool:
        if not self.exact:
            return self.delta > 1e-12
        return self.lower > 0 and self.p_better < alpha

    def cheaper(self, alpha: float) -> bool:
        if _nan(self.cost_delta):
            return False
        if _nan(self.cost_upper):
            return self.cost_delta < -1e-12
        return self.cost_upper < 0 and self.p_cheaper < alpha

    def pricier(self, alpha: float) -> bool:
        if _nan(self.cost_delta):
            return False
        if _nan(self.cost_lower):
            return self.cost_delta > 1e-12
        return self.cost_lower > 0 and self.p_pricier < alpha

    # -- the rules ---------------------------------------------------------------------------------
    def fails(self, margin: float, target: float, alpha: float = 0.05) -> bool:
        """Worse beyond ``margin``, significantly, and below the quality ``target``."""
        return self.delta < -margin - 1e-12 and self.worse(alpha) and self.new < target - 1e-12

    def overdelivers(self, margin: float, target: float, alpha: float = 0.05) -> bool:
        """Costs more than ``margin`` (cost-ratio points) more, significantly, on a slice where the
        champion already meets the quality ``target``, without a significant quality gain."""
        return (
            not _nan(self.cost_delta)
            and self.cost_delta > margin + 1e-12
            and self.pricier(alpha)
            and self.old >= target - 1e-12
            and not self.better(alpha)
        )

    # -- text --------------------------------------------------------------------------------------
    def text(self, alpha: float) -> str:
        """``new vs champion old (Δ, bound, sign test)`` of the quality."""
        conf = f"{100 * (1 - alpha):.0f}%"
        if not self.exact:
            return f"{self.new:.3f} vs champion {self.old:.3f} (Δ {self.delta:+.3f})"
        if self.delta < 0:
            stat = f"{conf} upper bound {self.upper:+.3f}, sign test p {self.p_worse:.3g}"
        else:
            stat = f"{conf} lower bound {self.lower:+.3f}, sign test p {self.p_better:.3g}"
        return f"{self.new:.3f} vs champion {self.old:.3f} (Δ {self.delta:+.3f}, {stat})"

    def cost_text(self, alpha: float) -> str:
        if _nan(self.cost_delta):
            return "unmeasured"
        head = f"{self.cost_new:.3f} vs champion {self.cost_old:.3f} (Δ {self.cost_delta:+.3f}"
        if _nan(self.cost_upper):
            return head + ")"
        conf = f"{100 * (1 - alpha):.0f}%"
        if self.cost_delta < 0:
            return head + f", {conf} upper bound {self.cost_upper:+.3f}, sign test p {self.p_cheaper:.3g})"
        return head + f", {conf} lower bound {self.cost_lower:+.3f}, sign test p {self.p_pricier:.3g})"


class Slice(Paired):
    """A slice's record in the verdict: the paired comparison, what it came to and why."""

    name: str = Field(description="task:<t>, group:<dataset>, overall or stable.")
    drifting: bool = False
    gated: bool = Field(default=True, description="False: a small task, judged with its dataset.")
    outcome: str = Field(
        description="worse | over-delivery | better | cheaper | better, cheaper | pricier | "
        "not significantly different"
    )
    reason: str


class Verdict(BaseModel):
    """The gate's decision with its reasons (logged to MLflow; a failed one is never promoted)."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str]
    checks: list[Check]
    challenger: str
    champion: str | None
    slices: list[Slice] = Field(
        default_factory=list,
        description="Per task (and group, overall, stable): rows, quality and cost of both, the paired "
        "differences with their bounds and sign tests, the outcome and its reason.",
    )

    def summary(self) -> str:
        head = "PASS" if self.passed else "FAIL"
        return f"{head}: " + "; ".join(self.reasons)


GAINS = frozenset({"better", "cheaper", "better, cheaper"})


def _bounds(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    if not len(boot):
        return float("nan"), float("nan")
    return float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))


def paired(
    new: Evaluation,
    old: Evaluation,
    select,  # noqa: ANN001 - callable (task, group) -> bool, or None for every row
    cfg: GateConfig,
    *,
    fallback: tuple[TaskMetrics, TaskMetrics] | None = None,
) -> Paired | None:
    """Paired differences of quality ratio and cost ratio on the rows ``select`` keeps (None when
    no row); without per-row outcomes, the point estimates of ``fallback``."""
    nan = float("nan")
    if new.rows is None or old.rows is None:
        if fallback is None:
            return None
        a, b = fallback
        return Paired(
            n=min(a.n, b.n),
            exact=False,
            new=a.quality_ratio,
            old=b.quality_ratio,
            delta=a.quality_ratio - b.quality_ratio,
            lower=nan,
            upper=nan,
            p_worse=nan,
            p_better=nan,
            cost_new=a.cost_ratio,
            cost_old=b.cost_ratio,
            cost_delta=a.cost_ratio - b.cost_ratio,
            cost_lower=nan,
            cost_upper=nan,
            p_pricier=nan,
            p_cheaper=nan,
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
    dq = qn - qo
    diff = dq[idx].sum(axis=1)
    lower, upper = _bounds(diff[den > 0] / den[den > 0], cfg.alpha)
    has_cost = len(new.rows.cost) == len(new.rows.keys) and len(old.rows.cost) == len(old.rows.keys)
    if has_cost:
        cn = np.asarray(new.rows.cost)[pick_new]
        co = np.asarray(old.rows.cost)[pick_old]
        dc = cn - co
        c_lower, c_upper = _bounds(dc[idx].mean(axis=1), cfg.alpha)
        c_new, c_old, c_delta = float(cn.mean()), float(co.mean()), float(dc.mean())
        up, down = int((dc > 1e-12).sum()), int((dc < -1e-12).sum())
        p_pricier, p_cheaper = sign_test(down, up), sign_test(up, down)
    elif fallback is not None:
        a, b = fallback
        c_new, c_old, c_delta = a.cost_ratio, b.cost_ratio, a.cost_ratio - b.cost_ratio
        c_lower = c_upper = p_pricier = p_cheaper = nan
    else:
        c_new = c_old = c_delta = c_lower = c_upper = p_pricier = p_cheaper = nan
    pos, neg = int((dq > 1e-12).sum()), int((dq < -1e-12).sum())
    return Paired(
        n=len(qn),
        exact=True,
        new=float(qn.sum() / ref),
        old=float(qo.sum() / ref),
        delta=float(dq.sum() / ref),
        lower=lower,
        upper=upper,
        p_worse=sign_test(pos, neg),
        p_better=sign_test(neg, pos),
        cost_new=c_new,
        cost_old=c_old,
        cost_delta=c_delta,
        cost_lower=c_lower,
        cost_upper=c_upper,
        p_pricier=p_pricier,
        p_cheaper=p_cheaper,
    )


def judge_slice(
    d: Paired,
    name: str,
    label: str,
    cfg: GateConfig,
    margin: float,
    *,
    drifting: bool = False,
    gated: bool = True,
) -> Slice:
    """What one slice comes to under the gate's rules, with the reason in words."""
    a, target = cfg.alpha, cfg.quality_target
    quality = f"quality {d.text(a)}"
    cost = f"cost {d.cost_text(a)}"
    if d.fails(margin, target, a):
        outcome = "worse"
        why = (
            f"quality drop {d.delta:+.3f} beyond margin {margin:.3f}, significant, "
            f"and below the target {target:.3f}"
        )
    elif not drifting and d.overdelivers(cfg.overdelivery_margin, target, a):
        outcome = "over-delivery"
        why = (
            f"cost {d.cost_delta:+.3f} beyond the over-delivery margin {cfg.overdelivery_margin:.3f}, "
            f"significant, where the champion already meets the target {target:.3f}, "
            f"with no significant quality gain"
        )
    else:
        if d.delta < -margin - 1e-12:
            drop = f"a quality drop {d.delta:+.3f} beyond margin {margin:.3f} but " + (
                "not significant (noise on this slice)"
                if not d.worse(a)
                else f"with the challenger still at the target {target:.3f}"
            )
        elif d.delta < 0:
            drop = f"a quality change {d.delta:+.3f} within margin {margin:.3f}"
        else:
            drop = ""
        gains = [w for w, ok in (("better", d.better(a)), ("cheaper", d.cheaper(a))) if ok]
        if gains:
            outcome = ", ".join(gains)
            why = f"significantly {' and '.join(gains)}" + (f", at {drop}" if drop else "")
        elif d.pricier(a):
            outcome = "pricier"
            if drifting:
                why = "costs significantly more on a drifting task (a repair may)"
            elif d.old < target - 1e-12:
                why = f"costs significantly more where the champion is below the target {target:.3f}"
            else:
                why = (
                    f"costs significantly more, within the over-delivery margin {cfg.overdelivery_margin:.3f}"
                )
            why += f", {drop}" if drop else ""
        else:
            outcome = "not significantly different"
            why = drop[0].upper() + drop[1:] if drop else "no significant difference in quality or cost"
    if not gated:
        why += "; judged with its dataset (fewer than min_task_rows rows)"
    return Slice(
        **d.model_dump(),
        name=name,
        drifting=drifting,
        gated=gated,
        outcome=outcome,
        reason=f"{label}: {why}: {quality}; {cost}; margin {margin:.3f}, n={d.n}",
    )


def gate(
    challenger: Evaluation,
    champion: Evaluation | None,
    cfg: GateConfig,
    drift_tasks: list[str] | tuple[str, ...] = (),
) -> Verdict:
    """Compare ``challenger`` with ``champion`` (None: first model) under ``cfg``; see module doc."""
    checks: list[Check] = []
    slices: list[Slice] = []
    gains: list[str] = []
    drift = list(dict.fromkeys(drift_tasks))
    a = cfg.alpha

    def record(s: Slice, check: str) -> None:
        slices.append(s)
        if s.outcome in GAINS:
            gains.append(f"{s.name} {s.outcome}")
        checks.append(Check(name=check, passed=s.outcome != "worse", detail=s.reason))
        if s.outcome == "over-delivery":
            checks.append(
                Check(name=f"overdelivery:{s.name.split(':', 1)[-1]}", passed=False, detail=s.reason)
            )

    # 1. no task worse than the champion beyond its margin (small tasks: per dataset)
    if champion is not None:
        small: set[str] = set()
        for task in sorted(set(challenger.per_task) & set(champion.per_task)):
            new, old = challenger.per_task[task], champion.per_task[task]
            alone = min(new.n, old.n) >= cfg.min_task_rows
            if not alone:
                small.add(task)
            m = cfg.margin(task)
            d = paired(challenger, champion, lambda t, g, task=task: t == task, cfg, fallback=(new, old))
            if d is None:
                continue
            s = judge_slice(d, f"task:{task}", f"task {task}", cfg, m, drifting=task in drift, gated=alone)
            if alone:
                record(s, f"task:{task}")
            else:
                slices.append(s)  # recorded, not a check: its dataset's group is
                if task in drift and s.outcome in GAINS:
                    # the task this retrain was asked for (a drift, a savings opportunity) is left
                    # out of its group; its own significant saving or gain is what the retrain is
                    # for, however small the task (the slice's tests keep noise out)
                    gains.append(f"{s.name} {s.outcome}")
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
                s = judge_slice(d, f"group:{group}", f"small tasks of {group} together", cfg, cfg.task_margin)
                record(s, f"group:{group}")

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
        if ok and before is not None and before.quality_ratio < line - 1e-12:
            gains.append(
                f"drifting task {task} repaired ({before.quality_ratio:.3f} -> {new.quality_ratio:.3f})"
            )
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
            s = judge_slice(d, "overall", "overall", cfg, cfg.overall_margin, drifting=True)
            slices.append(s)
            if s.outcome in GAINS:
                gains.append(f"overall {s.outcome}")
            checks.append(
                Check(
                    name="overall:quality",
                    passed=not d.fails(cfg.overall_margin, cfg.quality_target, a),
                    detail=f"overall quality {d.text(a)}, margin {cfg.overall_margin:.3f}, "
                    f"cost {d.cost_text(a)}, n={d.n}",
                )
            )
        d = paired(challenger, champion, lambda t, g: t not in drift, cfg)
        if d is not None and drift:
            slices.append(judge_slice(d, "stable", "the non-drifting tasks together", cfg, cfg.stable_margin))
            checks.append(
                Check(
                    name="stable:quality",
                    passed=not d.fails(cfg.stable_margin, cfg.quality_target, a),
                    detail=f"quality on the non-drifting tasks {d.text(a)}, "
                    f"margin {cfg.stable_margin:.3f}, n={d.n}",
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
        # 5. something gained: cheaper or better somewhere, or a drifting task repaired
        if cfg.require_gain:
            gains = list(dict.fromkeys(gains))
            checks.append(
                Check(
                    name="gain",
                    passed=bool(gains),
                    detail=(
                        "gains: "
                        + "; ".join(gains[:8])
                        + (f" (+{len(gains) - 8} more)" if len(gains) > 8 else "")
                        if gains
                        else "no gain: the challenger is neither significantly cheaper nor better than the "
                        "champion on any task, group or overall, and repairs no drifting task"
                    ),
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
        slices=slices,
    )


def metrics_of(prefix: str, ev: Evaluation) -> dict[str, float]:
    """Flat MLflow metrics of an evaluation (``<prefix>.overall.quality_ratio``, per task, ...)."""
    out: dict[str, float] = {f"{prefix}.apgr": ev.apgr, f"{prefix}.ece": ev.ece}
    for name, tm in [("overall", ev.overall), *((f"task.{t}", m) for t, m in ev.per_task.items())]:
        for k in ("quality_ratio", "cost_ratio", "strong_share", "quality"):
            out[f"{prefix}.{name}.{k}"] = float(getattr(tm, k))
    return {k: v for k, v in out.items() if not _nan(v)}

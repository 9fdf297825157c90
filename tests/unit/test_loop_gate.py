"""The promotion gate: rejects a worse challenger with reasons, accepts a better one, per-task margins."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.gate import Evaluation, GateConfig, TaskMetrics, gate, metrics_of


def tm(q: float, cost: float = 0.3, n: int = 100) -> TaskMetrics:
    return TaskMetrics(
        n=n, quality=q * 0.8, strong_quality=0.8, quality_ratio=q, cost_ratio=cost, strong_share=cost
    )


def ev(version: str, tasks: dict[str, TaskMetrics], apgr: float = 0.6, ece: float = 0.05) -> Evaluation:
    n = sum(t.n for t in tasks.values())
    q = sum(t.quality_ratio * t.n for t in tasks.values()) / n
    c = sum(t.cost_ratio * t.n for t in tasks.values()) / n
    return Evaluation(
        router_version=version, quality_target=0.95, overall=tm(q, c, n), per_task=tasks, apgr=apgr, ece=ece
    )


CHAMPION = ev("champ", {"gsm8k": tm(0.96), "mbpp": tm(0.97), "law": tm(0.70, cost=0.05)})


def test_rejects_worse_challenger_with_reasons() -> None:
    worse = ev("worse", {"gsm8k": tm(0.85), "mbpp": tm(0.97), "law": tm(0.95, cost=0.6)}, apgr=0.4)
    v = gate(worse, CHAMPION, GateConfig(), ["law"])
    assert not v.passed
    text = " ".join(v.reasons)
    assert "task gsm8k" in text and "0.850" in text and "0.960" in text
    assert "APGR" in text
    assert not any("law" in r for r in v.reasons)  # the drifting task itself was repaired
    assert v.summary().startswith("FAIL")


def test_accepts_better_challenger() -> None:
    better = ev("better", {"gsm8k": tm(0.96), "mbpp": tm(0.96), "law": tm(0.94, cost=0.5)}, apgr=0.62)
    v = gate(better, CHAMPION, GateConfig(), ["law"])
    assert v.passed, v.reasons
    assert {c.name for c in v.checks} >= {
        "task:gsm8k",
        "task:mbpp",
        "repair:law",
        "overall:quality",
        "overall:cost",
    }
    assert v.summary().startswith("PASS")


def test_drifting_task_must_be_repaired() -> None:
    same = ev("same", {"gsm8k": tm(0.96), "mbpp": tm(0.97), "law": tm(0.72, cost=0.05)})
    v = gate(same, CHAMPION, GateConfig(), ["law"])
    assert not v.passed
    assert any("drifting task law" in r and "0.720" in r for r in v.reasons)


def test_missing_heldout_rows_for_drifting_task_fail() -> None:
    v = gate(CHAMPION, None, GateConfig(), ["brand_new"])
    assert not v.passed and any("no held-out rows" in r for r in v.reasons)


@pytest.mark.parametrize(("margin", "passes"), [(0.02, False), (0.06, True)])
def test_per_task_margin(margin: float, passes: bool) -> None:
    ch = ev("c", {"gsm8k": tm(0.92), "mbpp": tm(0.97), "law": tm(0.95, cost=0.3)})
    cfg = GateConfig(task_margin=0.02, task_margins={"gsm8k": margin}, overall_margin=0.05)
    v = gate(ch, CHAMPION, cfg, ["law"])
    check = next(c for c in v.checks if c.name == "task:gsm8k")
    assert check.passed is passes
    assert v.passed is passes


def test_small_tasks_are_not_gated_alone() -> None:
    ch = ev("c", {"gsm8k": tm(0.96), "mbpp": tm(0.97), "law": tm(0.95), "tiny": tm(0.2, n=5)})
    champ = ev("champ", {**CHAMPION.per_task, "tiny": tm(1.0, n=5)})
    v = gate(ch, champ, GateConfig(min_task_rows=20, overall_margin=0.2), ["law"])
    assert "task:tiny" not in {c.name for c in v.checks}


def test_cost_rise_on_stable_tasks_fails() -> None:
    pricey = ev("p", {"gsm8k": tm(0.96, cost=0.9), "mbpp": tm(0.97, cost=0.9), "law": tm(0.95)})
    v = gate(pricey, CHAMPION, GateConfig(cost_margin=0.25), ["law"])
    assert not v.passed and any("cost ratio on stable tasks" in r for r in v.reasons)


def test_calibration_worse_fails() -> None:
    ch = ev("c", {"gsm8k": tm(0.96), "mbpp": tm(0.97), "law": tm(0.95)}, ece=0.2)
    v = gate(ch, CHAMPION, GateConfig(ece_margin=0.03), ["law"])
    assert not v.passed and any(r.startswith("ECE") for r in v.reasons)


def test_first_model_needs_absolute_quality() -> None:
    assert gate(ev("a", {"x": tm(0.95)}), None, GateConfig()).passed
    assert not gate(ev("b", {"x": tm(0.5)}), None, GateConfig()).passed


def test_metrics_are_flat_and_finite() -> None:
    m = metrics_of("challenger", ev("a", {"x": tm(0.95)}, apgr=float("nan")))
    assert "challenger.task.x.quality_ratio" in m and "challenger.apgr" not in m
    assert all(np.isfinite(v) for v in m.values())


def _metrics(q: list[float], s: list[float]) -> TaskMetrics:
    return TaskMetrics(
        n=len(q),
        quality=float(np.mean(q)),
        strong_quality=float(np.mean(s)),
        quality_ratio=float(np.sum(q) / np.sum(s)),
        cost_ratio=0.3,
        strong_share=0.3,
    )


def rows_ev(
    version: str, per_task: dict[str, tuple[list[float], list[float]]], group: dict[str, str] | None = None
):
    """An Evaluation with per-row outcomes: per task (chosen correctness, strong correctness)."""
    keys, tasks, groups, q, s = [], [], [], [], []
    metrics = {}
    for task, (qs, ss) in per_task.items():
        keys += [f"{task}-{i}" for i in range(len(qs))]
        tasks += [task] * len(qs)
        groups += [(group or {}).get(task, task)] * len(qs)
        q += qs
        s += ss
        metrics[task] = _metrics(qs, ss)
    from training.evaluation.gate import RowOutcomes

    overall = _metrics(q, s)
    return Evaluation(
        router_version=version,
        quality_target=0.95,
        overall=overall,
        per_task=metrics,
        apgr=0.6,
        ece=0.05,
        rows=RowOutcomes(keys=keys, tasks=tasks, groups=groups, quality=q, strong=s),
    )


def _flip(values: list[float], k: int) -> list[float]:
    """The first ``k`` correct answers turned wrong."""
    out, left = list(values), k
    for i, v in enumerate(out):
        if left and v == 1.0:
            out[i], left = 0.0, left - 1
    return out


RNG = np.random.default_rng(7)
STRONG = {
    t: (RNG.random(n) < 0.85).astype(float).tolist()
    for t, n in (("gsm8k", 80), ("mmlu_x", 400), ("law", 300))
}


def test_paired_gate_passes_a_drop_that_is_noise() -> None:
    """One different answer on 80 rows is a 1.5-point drop: beyond a point margin of 1 point,
    not a significant loss."""
    base = {t: (s, s) for t, s in STRONG.items()}
    champ = rows_ev("champ", base)
    chall = rows_ev("chall", {**base, "gsm8k": (_flip(STRONG["gsm8k"], 1), STRONG["gsm8k"])})
    cfg = GateConfig(task_margin=0.01, quality_target=0.99)
    v = gate(chall, champ, cfg, [])
    check = next(c for c in v.checks if c.name == "task:gsm8k")
    assert check.passed, check.detail
    assert "upper bound" in check.detail
    # the same drop without per-row outcomes is a point comparison and fails
    bare = gate(chall.model_copy(update={"rows": None}), champ.model_copy(update={"rows": None}), cfg, [])
    assert not next(c for c in bare.checks if c.name == "task:gsm8k").passed


def test_paired_gate_fails_a_real_drop() -> None:
    base = {t: (s, s) for t, s in STRONG.items()}
    champ = rows_ev("champ", base)
    chall = rows_ev("chall", {**base, "gsm8k": (_flip(STRONG["gsm8k"], 12), STRONG["gsm8k"])})
    v = gate(chall, champ, GateConfig(), [])
    assert not v.passed
    assert any("task gsm8k" in r for r in v.reasons)


def test_a_repaired_drifting_task_cannot_hide_a_loss_on_the_others() -> None:
    """Overall quality rises (the big drifting task is repaired) while the stable tasks, each
    within its own wide margin, lose 9% together."""
    champ = rows_ev(
        "champ",
        {
            "gsm8k": (STRONG["gsm8k"], STRONG["gsm8k"]),
            "mmlu_x": (STRONG["mmlu_x"], STRONG["mmlu_x"]),
            "law": (_flip(STRONG["law"], 120), STRONG["law"]),
        },
    )
    chall = rows_ev(
        "chall",
        {
            "gsm8k": (_flip(STRONG["gsm8k"], 6), STRONG["gsm8k"]),
            "mmlu_x": (_flip(STRONG["mmlu_x"], 30), STRONG["mmlu_x"]),
            "law": (STRONG["law"], STRONG["law"]),
        },
    )
    cfg = GateConfig(task_margins={"mmlu_x": 0.10, "gsm8k": 0.10})
    v = gate(chall, champ, cfg, ["law"])
    names = {c.name: c.passed for c in v.checks}
    assert names["overall:quality"] and names["repair:law"] and names["task:mmlu_x"] and names["task:gsm8k"]
    assert names["stable:quality"] is False
    assert not v.passed


def test_a_drop_that_still_meets_the_quality_target_passes() -> None:
    """The champion over-delivers (every answer of the task as good as GPT-4's); the challenger
    keeps ~96.5% of it, a significant drop beyond the margin but within the user's 95% target."""
    base = {t: (s, s) for t, s in STRONG.items()}
    champ = rows_ev("champ", base)
    chall = rows_ev("chall", {**base, "mmlu_x": (_flip(STRONG["mmlu_x"], 12), STRONG["mmlu_x"])})
    ok = gate(chall, champ, GateConfig(task_margin=0.03, quality_target=0.95), [])
    assert next(c for c in ok.checks if c.name == "task:mmlu_x").passed
    strict = gate(chall, champ, GateConfig(task_margin=0.03, quality_target=0.99), [])
    check = next(c for c in strict.checks if c.name == "task:mmlu_x")
    assert not check.passed, check.detail


def test_small_tasks_are_judged_together_per_dataset() -> None:
    """40 subjects of 10 rows each: none is gated alone, their dataset is."""
    per_task, groups = {}, {}
    rng = np.random.default_rng(3)
    for i in range(40):
        s = (rng.random(10) < 0.85).astype(float).tolist()
        per_task[f"subject{i}"] = (s, s)
        groups[f"subject{i}"] = "mmlu"
    champ = rows_ev("champ", per_task, groups)
    worse = {t: (_flip(s, 1) if i % 2 == 0 else s, s) for i, (t, (s, _)) in enumerate(per_task.items())}
    chall = rows_ev("chall", worse, groups)
    v = gate(chall, champ, GateConfig(), [])
    assert not any(c.name.startswith("task:") for c in v.checks)
    group = next(c for c in v.checks if c.name == "group:mmlu")
    assert not group.passed and "n=400" in group.detail

"""Routing on tasks the router never saw: grouped folds, the rules, cold-start calibration, the
evaluation's pooled metrics and winner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.catalog import load_catalog
from services.router.calibration import Calibration, Platt, ThresholdTable, fit_table
from services.router.policy import RULES, RoutingPolicy, choose, escalation
from training.evaluation.kinds import EvalConfig, pick_winner, realized, two_tier_row
from training.splits import task_folds, train_mask
from training.train import TrainConfig, TrainingSet, fit_cold_start, grouped_oof_logits

GPT4 = "gpt-4-1106-preview"
MIX = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def test_task_folds_hold_every_task_out_whole() -> None:
    tasks = [f"t{i % 13}" for i in range(500)]
    folds = task_folds(tasks, 5)
    assert (folds == task_folds(tasks, 5)).all() and set(folds) == set(range(5))
    by_task = pd.Series(folds).groupby(pd.Series(tasks)).nunique()
    assert (by_task == 1).all()  # no task in two folds, so none in both train and test
    hashes = pd.Series([f"p{i % 97}" for i in range(500)])  # prompts shared across tasks
    for f in range(5):
        train = train_mask(hashes, folds == f)
        assert not set(np.array(tasks)[train]) & set(np.array(tasks)[folds == f])
        assert not set(hashes[train]) & set(hashes[folds == f])


@pytest.mark.parametrize("rule", RULES)
def test_escalation_is_the_rule_for_two_candidates(rule: str) -> None:
    """The cheap model is chosen exactly when its escalation is at most the threshold (1 - t for
    absolute): one number per prompt orders the decisions at every threshold."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, size=(400, 2))  # columns: strong, cheap
    prices = np.array([25.0, 0.25])
    esc = escalation(p[:, 0], p[:, 1], rule)
    for t in np.linspace(0.0, 1.0, 11):
        cheap = choose(p, prices, t, strong=0, rule=rule) == 1
        line = 1.0 - t if rule == "absolute" else t
        assert (cheap == (esc <= line + 1e-9)).all(), (rule, t)


def test_need_rule_prefers_the_cheapest_model_unlikely_to_lose() -> None:
    # columns: cheap, mid, strong; the strong model (reference) always qualifies
    scores = np.array([[0.9, 0.9, 0.9], [0.3, 0.95, 0.9], [0.1, 0.2, 0.9], [np.nan, 0.5, 0.6]])
    prices = np.array([0.2, 1.0, 25.0])
    assert choose(scores, prices, 0.1, strong=2, rule="need").tolist() == [0, 1, 2, 2]
    assert choose(scores, prices, 0.7, strong=2, rule="need").tolist() == [0, 0, 2, 1]
    assert choose(scores, prices, -0.01, strong=2, rule="need").tolist() == [2, 2, 2, 2]


def _table(thr: float) -> ThresholdTable:
    return ThresholdTable(targets=[0.5, 1.0], thresholds=[thr, thr], candidates=[GPT4, MIX], n=100)


def test_unknown_tasks_get_the_cold_start_calibration() -> None:
    cal = Calibration(
        models=[GPT4, MIX],
        strong_model=GPT4,
        platt={GPT4: Platt(), MIX: Platt()},
        global_table=_table(0.3),
        task_tables={"gsm8k": _table(0.1)},
        known_tasks=["gsm8k", "astronomy"],
        unknown_platt={GPT4: Platt(), MIX: Platt(a=1.0, b=-2.0)},
        unknown_table=_table(0.05),
    )
    assert cal.table("gsm8k")[0].thresholds[0] == 0.1  # its own table
    assert cal.table("astronomy")[0].thresholds[0] == 0.3  # known, no table: global
    for t in (None, "default", "contract_law"):  # never trained on: cold start
        assert cal.table(t)[0].thresholds[0] == 0.05 and cal.is_unknown(t)
    p = cal.apply(np.zeros((3, 2)), ["astronomy", None, "contract_law"])
    assert p[0, 1] == pytest.approx(0.5) and p[1, 1] == pytest.approx(p[2, 1]) and p[1, 1] < 0.2
    # a router without the cold-start part behaves as before: the global table for all
    old = cal.model_copy(update={"unknown_table": None, "unknown_platt": {}})
    assert old.table("contract_law")[0].thresholds[0] == 0.3 and not old.is_unknown(None)
    assert Calibration.model_validate_json(cal.model_dump_json()) == cal
    # the gateway's decision for an untagged request uses it too
    policy = RoutingPolicy(load_catalog(None), cal)
    assert policy.decide({GPT4: 0.9, MIX: 0.8}, "default", 0.95, None, [GPT4, MIX]).threshold == 0.05


def _synthetic(n_tasks: int = 12, per_task: int = 120, seed: int = 0) -> TrainingSet:
    """Tasks whose cheap-model accuracy follows a direction of the embedding."""
    rng = np.random.default_rng(seed)
    tasks, embs, labels = [], [], []
    for t in range(n_tasks):
        emb = 0.05 * (rng.normal(size=384) + rng.normal(size=(per_task, 384)))
        emb[:, 0] = rng.normal(size=per_task)
        p_cheap = 1 / (1 + np.exp(-3 * emb[:, 0]))
        ys = (rng.random(per_task) < 0.85).astype(float)
        yw = (rng.random(per_task) < p_cheap).astype(float)
        tasks += [f"task{t}"] * per_task
        embs.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
        labels.append(np.stack([ys, yw], 1))
    frame = pd.DataFrame({"prompt_hash": [f"h{i}" for i in range(len(tasks))], "task": tasks})
    return TrainingSet(
        frame, np.concatenate(embs).astype(np.float32), tasks, np.concatenate(labels), [GPT4, MIX]
    )


def test_cold_start_table_keeps_the_target_on_new_tasks() -> None:
    """Fitted on leave-tasks-out scores of some tasks, the cold-start table keeps the target
    (within 1.5 points, not far above) on tasks the head never saw."""
    ts = _synthetic(n_tasks=16, per_task=150)
    cfg = TrainConfig(kind="mlp", epochs=6, hidden=16, seed=0)
    lg = grouped_oof_logits(ts, cfg, k=4)
    assert lg is not None and lg.shape == ts.labels.shape
    prices = np.array([25.0, 0.25])
    tasks = np.array(ts.tasks)
    fit_rows = np.isin(tasks, [f"task{i}" for i in range(8)])
    platt, table = fit_cold_start(lg[fit_rows], ts.labels[fit_rows], ts.models, prices, GPT4)
    assert table.candidates == [GPT4, MIX]
    a = np.array([platt[m].a for m in ts.models])
    b = np.array([platt[m].b for m in ts.models])
    p = 1 / (1 + np.exp(-(a * lg[~fit_rows] + b)))
    y = ts.labels[~fit_rows]
    idx = choose(p, prices, table.threshold(0.95), strong=0)
    ratio = y[np.arange(len(y)), idx].mean() / y[:, 0].mean()
    assert 0.93 <= ratio <= 0.975
    assert (idx == 1).mean() > 0.2  # and it saves: a good share goes to the cheap model


def test_two_tier_row_pools_rows_and_gives_intervals() -> None:
    rng = np.random.default_rng(0)
    ys = (rng.random(3000) < 0.85).astype(float)
    yw = (rng.random(3000) < 0.65).astype(float)
    good = (ys - yw) + 0.5 * rng.normal(size=3000)
    cfg = EvalConfig(bootstrap=50)
    row = two_tier_row("x", good, ys, yw, cfg)
    rand = two_tier_row("r", rng.normal(size=3000), ys, yw, cfg)
    assert row["share_at_95"] < rand["share_at_95"] and row["apgr"] > rand["apgr"]
    for key in ("share_at_95", "apgr", "cpt50", "cpt80"):
        lo, hi = row[key + "_ci"]
        assert lo <= row[key] <= hi and hi - lo < 0.2


def test_winner_is_the_lowest_mean_grouped_share_and_never_random() -> None:
    rows = {
        "mmlu": [
            {"kind": "random", "rule": "gap", "share_at_95": 0.1},
            {"kind": "mlp", "rule": "gap", "share_at_95": 0.5},
            {"kind": "mlp", "rule": "need", "share_at_95": 0.45},
        ],
        "gsm8k": [
            {"kind": "random", "rule": "gap", "share_at_95": 0.1},
            {"kind": "mlp", "rule": "gap", "share_at_95": 0.6},
            {"kind": "mlp", "rule": "need", "share_at_95": 0.7},
        ],
    }
    assert pick_winner(rows) == {"kind": "mlp", "rule": "gap", "mean_share_at_95": pytest.approx(0.55)}


def test_realized_quality_and_cost() -> None:
    labels = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    chosen = np.array([1, 0, 1, 0])
    r = realized(chosen, labels, np.array([10.0, 1.0]), 0, np.ones(4, bool))
    assert r["quality_ratio"] == pytest.approx(0.5 / 0.75) and r["strong_share"] == 0.5
    assert r["cost_ratio"] == pytest.approx(22 / 40)


def test_fit_table_on_pooled_new_task_rows_is_monotone_in_target() -> None:
    rng = np.random.default_rng(1)
    ys = (rng.random(2000) < 0.85).astype(float)
    yw = (rng.random(2000) < 0.65).astype(float)
    p = np.stack([0.5 + 0.3 * ys, 0.5 + 0.3 * yw], 1) + 0.1 * rng.normal(size=(2000, 2))
    t = fit_table(p, np.stack([ys, yw], 1), np.array([25.0, 0.25]), [GPT4, MIX], 0, rule="need")
    assert all(a >= b - 1e-12 for a, b in zip(t.thresholds, t.thresholds[1:], strict=False))


def test_cold_start_coverage_guards_each_task_not_only_the_pool() -> None:
    """With coverage 1 every task keeps the target within tolerance; pooled alone lets a task
    whose cheap model is much worse fall below it."""
    rng = np.random.default_rng(2)
    n = 3000
    task = np.where(np.arange(n) < 2400, "easy", "hard")
    ys = (rng.random(n) < 0.85).astype(float)
    p_cheap = np.where(task == "easy", 0.8, 0.3)
    yw = (rng.random(n) < p_cheap).astype(float)
    # the scores do not know the tasks differ (a new task looks like the others)
    scores = np.stack([np.full(n, 0.85), 0.6 + 0.2 * yw * (task == "easy") + 0.05 * rng.normal(size=n)], 1)
    labels = np.stack([ys, yw], 1)
    prices = np.array([25.0, 0.25])
    pooled = fit_table(scores, labels, prices, [GPT4, MIX], 0)
    guarded = fit_table(scores, labels, prices, [GPT4, MIX], 0, groups=list(task), coverage=1.0)
    assert guarded.threshold(0.95) < pooled.threshold(0.95)

    def ratios(table: ThresholdTable) -> dict[str, float]:
        idx = choose(scores, prices, table.threshold(0.95), strong=0)
        got = labels[np.arange(n), idx]
        return {t: got[task == t].mean() / ys[task == t].mean() for t in ("easy", "hard")}

    assert ratios(pooled)["hard"] < 0.935
    assert min(ratios(guarded).values()) >= 0.935 - 1e-9


def test_cascade_table_lands_on_its_target_on_held_out_gsm8k(data_dir) -> None:
    """The cascade's acceptance threshold per target, fitted on other folds of real GSM8K
    answers, keeps the target (within 1.5 points) on the rows it never saw, and accepts more
    cheap answers at a lower target."""
    from training.cascade import cascade_design, fit_cascade, fit_cascade_table
    from training.data import load_gsm8k
    from training.splits import kfold

    bench = load_gsm8k(data_dir)
    f = bench.frame.reset_index(drop=True)
    labels = bench.labels([GPT4, MIX]).to_numpy(float)
    ts = TrainingSet(f, np.zeros((len(f), 384), np.float32), f["task"].tolist(), labels, [GPT4, MIX])
    folds = kfold(f["prompt_hash"], 4, seed=3)
    accept = {0.9: np.zeros(len(f), bool), 0.95: np.zeros(len(f), bool)}
    for k in range(4):
        train = ts.subset(folds != k)
        table = fit_cascade_table(train, MIX, GPT4)
        assert table is not None and table.candidates == [GPT4, MIX]
        spec, params = fit_cascade(train, MIX)
        x = cascade_design(ts, folds == k, MIX, use_embedding=spec.use_embedding)
        z = ((x - params["mean"]) / params["std"]) @ params["coef"] + params["intercept"][0]
        for t in accept:
            accept[t][folds == k] = 1 / (1 + np.exp(-z)) >= table.threshold(t)
    ys, yw = labels[:, 0], labels[:, 1]
    realized = {t: np.where(a, yw, ys).mean() / ys.mean() for t, a in accept.items()}
    for t, q in realized.items():
        assert t - 0.015 <= q <= t + 0.015, realized
    assert accept[0.9].mean() > accept[0.95].mean() > 0.3  # a lower target accepts more; it saves


def test_one_big_task_graded_for_many_models_does_not_make_them_every_tasks_candidates() -> None:
    """A retrain that loads every row of a RouterBench task (11 graded models) beside MMLU
    subjects (two graded models): the shared table's candidates stay the two, since each task
    weighs the same; by row share alone the big task's models would win."""
    from training.train import _graded_candidates

    models = [GPT4, MIX, "claude-v1"]
    small = np.array([[1.0, 0.0, np.nan]] * 10)  # 30 MMLU-like tasks of 10 rows: GPT-4 and Mixtral
    big = np.array([[1.0, 1.0, 1.0]] * 1200)  # one task of 1,200 rows graded for all three
    labels = np.concatenate([small] * 30 + [big])
    tasks = [f"mmlu{i}" for i in range(30) for _ in range(10)] + ["arc"] * 1200
    base = np.ones(len(labels), bool)
    assert _graded_candidates(labels, base, models) == models  # the old rule: by rows
    assert _graded_candidates(labels, base, models, tasks) == [GPT4, MIX]

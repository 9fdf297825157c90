"""Calibration (Platt, threshold tables) and the routing policy."""

from __future__ import annotations

import numpy as np
import pytest

from services.catalog import load_catalog
from services.router.calibration import Calibration, ThresholdTable, fit_platt, fit_table
from services.router.heads import logit, sigmoid
from services.router.policy import PolicyError, RoutingPolicy, choose

GPT4 = "gpt-4-1106-preview"
MIX = "mistralai/Mixtral-8x7B-Instruct-v0.1"
GPT35 = "gpt-3.5-turbo-1106"


def test_platt_recovers_a_known_distortion() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(-3, 3, 20000)
    y = (rng.random(20000) < sigmoid(true)).astype(float)
    raw = true / 2.0 - 0.5  # an overconfident-shrunk, shifted score
    p = fit_platt(raw, y, l2=0.0)
    assert p.a == pytest.approx(2.0, rel=0.08)
    assert p.b == pytest.approx(1.0, abs=0.1)


def test_choose_gap_and_absolute_rules() -> None:
    scores = np.array([[0.70, 0.80, 0.90], [0.20, 0.85, 0.90], [np.nan, 0.10, 0.90]])
    prices = np.array([0.2, 1.0, 25.0])
    assert choose(scores, prices, 0.25).tolist() == [0, 1, 2]
    assert choose(scores, prices, 0.10).tolist() == [1, 1, 2]
    assert choose(scores, prices, -0.01, strong=2).tolist() == [2, 2, 2]  # nobody qualifies -> strong
    assert choose(scores, prices, 0.5, rule="absolute").tolist() == [0, 1, 2]


def _two_tier(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of a strong (85% right) and a cheap (65% right) model, noisy scores."""
    rng = np.random.default_rng(seed)
    ys = (rng.random(n) < 0.85).astype(float)
    yw = (rng.random(n) < 0.65).astype(float)
    noisy = np.stack(
        [0.5 + 0.3 * ys + 0.1 * rng.normal(size=n), 0.5 + 0.3 * yw + 0.1 * rng.normal(size=n)], 1
    )
    return noisy, np.stack([ys, yw], axis=1)


def test_fit_table_keeps_the_quality_target_on_its_data() -> None:
    n = 4000
    noisy, labels = _two_tier(n, 1)
    ys = labels[:, 0]
    prices = np.array([24.7, 0.24])
    table = fit_table(noisy, labels, prices, [GPT4, MIX], 0)
    for target in (0.9, 0.95, 0.99):
        t = table.threshold(target)
        idx = choose(noisy, prices, t, strong=0)
        q = labels[np.arange(n), idx].mean() / ys.mean()
        assert q >= target - 0.005
        assert (idx == 1).mean() > 0.05  # and it does route some traffic to the cheap model
    assert table.threshold(0.9) >= table.threshold(0.99)  # higher target, stricter threshold


def _calibration(models: list[str]) -> Calibration:
    table = ThresholdTable(targets=[0.5, 1.0], thresholds=[0.4, 0.0], candidates=models, n=100)
    return Calibration(
        models=models,
        strong_model=GPT4,
        global_table=table,
        task_tables={"math": table.model_copy(update={"thresholds": [0.2, -0.01]})},
    )


def test_policy_picks_cheapest_clearing_candidate() -> None:
    cat = load_catalog(None)
    pol = RoutingPolicy(cat, _calibration([GPT4, MIX, GPT35]))
    scores = {GPT4: 0.9, MIX: 0.7, GPT35: 0.8}
    d = pol.decide(scores, task=None, quality_target=0.5)  # threshold 0.4 -> everything qualifies
    assert d.model == MIX and not d.task_calibrated
    assert d.ranking == [GPT4, GPT35, MIX]
    assert d.expected_cost_usd == pytest.approx(cat.model(MIX).price.cost(512, 256))
    d = pol.decide(scores, task=None, quality_target=0.875)  # threshold 0.1 -> gpt-3.5 is the cheapest within
    assert d.model == GPT35 and d.margin == pytest.approx(0.0, abs=1e-9) and d.low_margin
    d = pol.decide(scores, task="math", quality_target=1.0)  # per-task table, nobody clears -> strong
    assert d.model == GPT4 and d.task_calibrated
    d = pol.decide(scores, task=None, quality_target=0.5, candidates=[GPT4, GPT35])
    assert d.model == GPT35


def test_policy_respects_budget_and_only_picks_scored_models() -> None:
    cat = load_catalog(None)
    pol = RoutingPolicy(cat, _calibration([GPT4, MIX, GPT35]))
    d = pol.decide({GPT4: 0.9, MIX: 0.2, GPT35: 0.3}, None, 1.0, max_cost_usd=0.001)
    assert d.model != GPT4 and "max_cost_usd" in d.reason
    d = pol.decide({GPT4: 0.9, GPT35: 0.89}, None, 0.5)  # MIX not scored -> never chosen
    assert d.model == GPT35
    with pytest.raises(PolicyError):
        pol.decide({}, None, 0.9)
    with pytest.raises(PolicyError):
        pol.decide({GPT4: 0.9}, None, 1.5)
    with pytest.raises(PolicyError):
        pol.decide({GPT4: 0.9}, None, 0.9, candidates=["no-such-model"])


def test_calibration_apply_uses_task_fit_when_present() -> None:
    cal = _calibration([GPT4, MIX])
    cal = Calibration.model_validate(
        {
            **cal.model_dump(),
            "platt": {GPT4: {"a": 1.0, "b": 0.0}, MIX: {"a": 1.0, "b": 0.0}},
            "task_platt": {"math": {GPT4: {"a": 1.0, "b": -2.0}}},
        }
    )
    z = logit(np.array([[0.5, 0.5], [0.5, 0.5]]))
    p = cal.apply(z, ["math", "other"])
    assert (
        p[0, 0] == pytest.approx(sigmoid(-2.0))
        and p[1, 0] == pytest.approx(0.5)
        and p[0, 1] == pytest.approx(0.5)
    )


def test_fit_table_ignores_rows_graded_for_one_model_only() -> None:
    """Live feedback grades only the model the router chose (mostly right where it chose the cheap
    one): such rows must not loosen the threshold."""
    n = 3000
    noisy, labels = _two_tier(n, 2)
    prices = np.array([24.7, 0.24])
    clean = fit_table(noisy, labels, prices, [GPT4, MIX], 0)
    # 2,000 rows where only the cheap model was graded, all accepted (biased live feedback)
    extra_labels = np.stack([np.full(2000, np.nan), np.ones(2000)], axis=1)
    extra_scores = np.stack([np.full(2000, 0.8), np.full(2000, 0.8)], axis=1)
    biased = fit_table(
        np.concatenate([noisy, extra_scores]), np.concatenate([labels, extra_labels]), prices, [GPT4, MIX], 0
    )
    assert biased.thresholds == clean.thresholds
    assert biased.n == n


def test_fit_table_with_confidence_is_more_cautious_on_thin_data() -> None:
    """On 300 rows the point estimate picks, by chance, thresholds that lose quality on new rows of
    the same distribution; with a 95% confidence bound the table keeps the target out of sample
    far more often, and still routes to the cheap model."""
    prices = np.array([24.7, 0.24])

    def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        ys = (rng.random(n) < 0.85).astype(float)
        yw = (rng.random(n) < 0.6).astype(float)
        sc = np.stack(
            [0.5 + 0.3 * ys + 0.2 * rng.normal(size=n), 0.5 + 0.3 * yw + 0.2 * rng.normal(size=n)], 1
        )
        return sc, np.stack([ys, yw], 1)

    fresh_s, fresh_l = draw(200_000, 99)
    quality: dict[float, list[float]] = {0.0: [], 0.95: []}
    cheap: dict[float, list[float]] = {0.0: [], 0.95: []}
    for seed in range(30):
        sc, lab = draw(300, seed)
        for conf in quality:
            t = fit_table(sc, lab, prices, [GPT4, MIX], 0, confidence=conf).threshold(0.95)
            idx = choose(fresh_s, prices, t, strong=0)
            quality[conf].append(fresh_l[np.arange(len(idx)), idx].mean() / fresh_l[:, 0].mean())
            cheap[conf].append((idx == 1).mean())
    miss = {c: float(np.mean(np.array(q) < 0.94)) for c, q in quality.items()}
    assert miss[0.0] >= 0.1  # the point estimate loses > 1 point beyond the target in many fits
    assert miss[0.95] <= 0.1 and miss[0.95] < miss[0.0]
    assert np.mean(cheap[0.95]) > 0.3  # caution, not "always the strong model"


def test_global_calibration_ignores_rows_graded_for_one_model() -> None:
    """Live outcomes of a drifting task grade one model only: they shape that task's own Platt
    and table, never the global ones that every other small task is served with."""
    from training.train import fit_calibration

    rng = np.random.default_rng(4)
    n = 600
    logits = rng.normal(size=(n, 2))
    labels = (rng.random((n, 2)) < 1 / (1 + np.exp(-logits))).astype(float)
    tasks = [f"subject{i % 10}" for i in range(n)]
    prices = np.array([24.7, 0.24])
    clean = fit_calibration(logits, labels, tasks, [GPT4, MIX], prices, GPT4)
    extra_logits = np.column_stack([np.full(300, 2.0), np.full(300, -4.0)])
    extra_labels = np.column_stack([np.full(300, np.nan), np.zeros(300)])
    drift = fit_calibration(
        np.vstack([logits, extra_logits]),
        np.vstack([labels, extra_labels]),
        tasks + ["law"] * 300,
        [GPT4, MIX],
        prices,
        GPT4,
    )
    assert drift.platt == clean.platt
    assert drift.global_table.thresholds == clean.global_table.thresholds
    assert "law" in drift.task_platt  # the drifting task's own calibration does use them

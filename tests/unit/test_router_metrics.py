"""Routing metrics against hand-computed cases, with oracle and random references."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.metrics import (
    bootstrap,
    cost_saving,
    ece,
    multi_curve,
    multi_oracle,
    oracle_curve,
    random_curve,
    two_tier_curve,
)


def test_two_tier_curve_hand_computed() -> None:
    # 4 queries: strong correct on all; weak correct on q0, q1. Router ranks q2 then q3 first.
    ys = np.array([1, 1, 1, 1])
    yw = np.array([1, 1, 0, 0])
    gain = np.array([0.1, 0.2, 0.9, 0.8])
    c = two_tier_curve(gain, ys, yw)
    assert c.share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert c.accuracy.tolist() == [0.5, 0.75, 1.0, 1.0, 1.0]
    assert c.share_at(0.95) == 0.5  # needs acc >= 0.95: both failures fixed
    assert c.share_at(0.70) == 0.25
    # PGR: 0, .5, 1, 1, 1 -> trapezoid area = (0+.5)/2*.25 + (.5+1)/2*.25 + 1*.5 = 0.0625+0.1875+0.5
    assert c.apgr() == pytest.approx(0.75)
    assert c.cpt(0.5) == 0.25
    assert c.cpt(0.8) == 0.5


def test_bad_router_is_worse_than_random_and_oracle_is_best() -> None:
    rng = np.random.default_rng(0)
    ys = rng.random(2000) < 0.8
    yw = rng.random(2000) < 0.65
    oracle = oracle_curve(ys, yw)
    rand = random_curve(ys, yw)
    anti = two_tier_curve(-(ys.astype(float) - yw), ys, yw)
    assert rand.apgr() == pytest.approx(0.5, abs=1e-9)
    assert oracle.apgr() > rand.apgr() > anti.apgr()
    assert oracle.share_at(0.95) < rand.share_at(0.95) < anti.share_at(0.95)
    # oracle share@95 by hand: fixes needed / n, sent in order of gain
    need = 0.95 * ys.mean() - yw.mean()
    assert oracle.share_at(0.95) == pytest.approx(np.ceil(need * 2000) / 2000)
    # random line: share = (0.95 acc_s - acc_w) / (acc_s - acc_w)
    expected = (0.95 * ys.mean() - yw.mean()) / (ys.mean() - yw.mean())
    assert rand.share_at(0.95) == pytest.approx(expected, abs=1 / 2000)


def test_constant_router_equals_random_line() -> None:
    ys = np.array([1, 0, 1, 1, 0, 1])
    yw = np.array([0, 0, 1, 0, 1, 1])
    assert two_tier_curve(np.full(6, 0.3), ys, yw).accuracy == pytest.approx(random_curve(ys, yw).accuracy)


def test_cost_saving_and_cascade_cost() -> None:
    assert cost_saving(0.5, 24.7, 0.24) == pytest.approx(1 - (0.5 * 24.7 + 0.5 * 0.24) / 24.7)
    assert cost_saving(0.5, 10, 1, cascade=True) == pytest.approx(1 - (5 + 1) / 10)


def test_ece_perfect_and_off() -> None:
    y = np.array([0, 1] * 50, dtype=float)
    assert ece(np.full(100, 0.5), y) == pytest.approx(0.0)
    assert ece(np.full(100, 0.9), y) == pytest.approx(0.4)


def test_multi_curve_and_oracle() -> None:
    # 2 queries, 3 models (cheap, mid, strong); scores say cheap is fine on q0 only
    labels = np.array([[1, 1, 1], [0, 1, 1]], dtype=float)
    costs = np.array([[1, 2, 10], [1, 2, 10]], dtype=float)
    scores = np.array([[0.9, 0.9, 0.95], [0.2, 0.85, 0.9]])
    prices = np.array([1.0, 2.0, 10.0])
    mc = multi_curve(scores, labels, costs, prices, 2, np.array([-0.01, 0.06, 1.01]))
    assert mc.quality.tolist() == [1.0, 1.0, 0.5]
    assert mc.cost.tolist() == [10.0, 1.5, 1.0]
    saving, share, q = mc.at(0.95)
    assert saving == pytest.approx(1 - 1.5 / 10) and share == 0.0 and q == 1.0
    assert multi_oracle(labels, costs, 2) == (pytest.approx(1 - 1.5 / 10), 1.0)


def test_bootstrap_interval_contains_estimate() -> None:
    x = np.random.default_rng(1).normal(size=500)
    lo, hi = bootstrap(lambda idx: x[idx].mean(), 500, 200)
    assert lo < x.mean() < hi

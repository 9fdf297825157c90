"""Routing metrics (RouteLLM's definitions) on real graded answers.

Two tiers: a router ranks queries by how much the strong model is expected to gain; sending the
top ``k`` to the strong model gives the curve ``accuracy(share)`` with ``share = k / n``.

- ``share_at(q)``: the smallest strong-call share whose accuracy reaches ``q × acc(strong)``
  (``share@95`` for q = 0.95).
- PGR (performance gap recovered) = ``(acc - acc_weak) / (acc_strong - acc_weak)``;
  APGR = the area under PGR over the share in [0, 1]; CPT(x) = the share needed for PGR ≥ x.
- Random routing is the straight line (APGR 0.5); the oracle sends exactly the queries the weak
  model fails and the strong one solves.
Tied scores are resolved in expectation (the curve is linear across a tie block), so a router
that outputs a constant is exactly the random line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    """Accuracy after sending the top ``share`` of queries to the strong model."""

    share: np.ndarray
    accuracy: np.ndarray
    acc_weak: float
    acc_strong: float

    @property
    def pgr(self) -> np.ndarray:
        gap = self.acc_strong - self.acc_weak
        return (self.accuracy - self.acc_weak) / gap if gap > 0 else np.ones_like(self.accuracy)

    def share_at(self, quality: float = 0.95) -> float:
        """Smallest share with accuracy ≥ ``quality`` × strong accuracy (1.0 if never)."""
        target = quality * self.acc_strong
        ok = np.flatnonzero(self.accuracy >= target - 1e-12)
        return float(self.share[ok[0]]) if len(ok) else 1.0

    def apgr(self) -> float:
        """Average PGR over the strong-call share (trapezoid rule)."""
        return float(np.trapezoid(self.pgr, self.share))

    def cpt(self, pgr: float) -> float:
        """Strong-call share needed to recover ``pgr`` of the gap."""
        ok = np.flatnonzero(self.pgr >= pgr - 1e-12)
        return float(self.share[ok[0]]) if len(ok) else 1.0


def two_tier_curve(gain: np.ndarray, y_strong: np.ndarray, y_weak: np.ndarray) -> Curve:
    """Curve of routing the highest-``gain`` queries to the strong model first (ties in expectation)."""
    gain = np.asarray(gain, float)
    ys, yw = np.asarray(y_strong, float), np.asarray(y_weak, float)
    n = len(gain)
    if n == 0:
        raise ValueError("empty evaluation set")
    order = np.argsort(-gain, kind="stable")
    g, d = gain[order], (ys - yw)[order]
    cum = np.concatenate([[0.0], np.cumsum(d)])
    # ends of tie blocks: positions k where the sorted gain changes (plus 0 and n)
    ends = np.concatenate([[0], np.flatnonzero(np.diff(g) != 0) + 1, [n]])
    ks = np.arange(n + 1)
    gained = np.interp(ks, ends, cum[ends])
    acc = (yw.sum() + gained) / n
    return Curve(ks / n, acc, float(yw.mean()), float(ys.mean()))


def oracle_curve(y_strong: np.ndarray, y_weak: np.ndarray) -> Curve:
    """The perfect router: strong calls only where they gain."""
    return two_tier_curve(np.asarray(y_strong, float) - np.asarray(y_weak, float), y_strong, y_weak)


def random_curve(y_strong: np.ndarray, y_weak: np.ndarray) -> Curve:
    """Random routing in expectation: the straight line."""
    return two_tier_curve(np.zeros(len(y_strong)), y_strong, y_weak)


def cost_saving(share: float, strong_price: float, weak_price: float, *, cascade: bool = False) -> float:
    """1 − cost / cost(all strong), with per-call cost ∝ price; a cascade always pays the weak call."""
    cost = share * strong_price + (1.0 if cascade else 1.0 - share) * weak_price
    return 1.0 - cost / strong_price


def bootstrap(fn, n_rows: int, n_boot: int, seed: int = 0) -> tuple[float, float]:  # noqa: ANN001
    """95% percentile interval of ``fn(indices)`` over ``n_boot`` resamples of the rows."""
    if n_boot <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    vals = [fn(rng.integers(0, n_rows, n_rows)) for _ in range(n_boot)]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error (equal-width bins), NaN labels ignored."""
    p, y = np.asarray(p, float).ravel(), np.asarray(y, float).ravel()
    keep = ~np.isnan(y) & ~np.isnan(p)
    p, y = p[keep], y[keep]
    if len(p) == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(p))


@dataclass(frozen=True)
class MultiCurve:
    """Cost-quality curve of a many-model policy (per-call costs), one point per threshold."""

    cost: np.ndarray
    quality: np.ndarray
    strong_share: np.ndarray
    strong_quality: float
    strong_cost: float

    def at(self, quality: float = 0.95) -> tuple[float, float, float]:
        """(cost saving, strong share, achieved quality) of the cheapest point ≥ quality × strong."""
        ok = np.flatnonzero(self.quality >= quality * self.strong_quality - 1e-12)
        if not len(ok):
            return 0.0, 1.0, self.strong_quality
        i = ok[np.argmin(self.cost[ok])]
        return float(1 - self.cost[i] / self.strong_cost), float(self.strong_share[i]), float(self.quality[i])


def multi_curve(
    scores: np.ndarray,
    labels: np.ndarray,
    costs: np.ndarray,
    prices: np.ndarray,
    strong: int,
    thresholds: np.ndarray,
    *,
    rule: str = "gap",
) -> MultiCurve:
    """Sweep the policy threshold; quality and mean real per-call cost of the chosen models."""
    from services.router.policy import choose

    rows = np.arange(len(scores))
    cost, qual, share = [], [], []
    for t in thresholds:
        idx = choose(scores, prices, t, strong=strong, rule=rule)
        qual.append(labels[rows, idx].mean())
        cost.append(costs[rows, idx].mean())
        share.append((idx == strong).mean())
    return MultiCurve(
        np.array(cost),
        np.array(qual),
        np.array(share),
        float(labels[:, strong].mean()),
        float(costs[:, strong].mean()),
    )


def multi_oracle(labels: np.ndarray, costs: np.ndarray, strong: int) -> tuple[float, float]:
    """(cost saving, quality) of sending each query to its cheapest correct model (else cheapest)."""
    ok = labels >= 0.5
    c = np.where(ok, costs, np.inf)
    has = ok.any(axis=1)
    pick = np.where(has, c.argmin(axis=1), costs.argmin(axis=1))
    rows = np.arange(len(labels))
    return float(1 - costs[rows, pick].mean() / costs[:, strong].mean()), float(labels[rows, pick].mean())

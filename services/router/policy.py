"""The routing policy: scores + quality target → the cheapest model expected to keep it.

Rules (:data:`RULES`; the artefact's calibration names the one it serves, chosen on
leave-tasks-out evaluation, see ``switchyard train eval kinds``):

- ``gap``: a candidate qualifies when its calibrated score is within ``threshold`` of the best
  candidate's, ``P(m) >= max_k P(k) - threshold``; with two tiers this is RouteLLM's ranking by
  expected gain ``P(strong) - P(weak)``.
- ``absolute``: ``P(m) >= threshold`` (two tiers: ranking by ``P(weak)`` alone).
- ``need``: ``P(ref) * (1 - P(m)) <= threshold``, the chance that the reference (the strong
  model, else the best-scored candidate) is right where ``m`` is wrong, if the two err
  independently; the reference itself always qualifies.

The cheapest qualifying candidate wins; when none qualifies the strong model (or the best-scored
candidate) answers. :func:`escalation` is the same decision as one number for two candidates.
``quality_target`` → threshold comes from the per-task calibration tables
(global for unknown tasks), see :mod:`services.router.calibration`.

This module is the one home of the policy: :class:`RoutingPolicy` (calibrated routers),
:class:`ScoreRatioPolicy` (routers without calibration), :func:`cascade_ladder` (the rungs a
cascade or hybrid call climbs). The default quality target of a task comes from the catalog
(``TaskDefaults.quality_target``), never from a constant here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.catalog import Catalog

if TYPE_CHECKING:  # calibration fits its tables with :func:`choose`: the import runs one way
    from .calibration import Calibration

log = logging.getLogger(__name__)

LOW_MARGIN = 0.02
RULES = ("gap", "absolute", "need")
DEFAULT_PROMPT_TOKENS = 512
DEFAULT_COMPLETION_TOKENS = 256


class PolicyError(ValueError):
    """The request cannot be routed (no usable candidate, bad target)."""


def choose(
    scores: np.ndarray,
    prices: np.ndarray,
    threshold: float | np.ndarray,
    *,
    strong: int | None = None,
    rule: str = "gap",
) -> np.ndarray:
    """Vectorised rule: per row of ``scores`` (n, M; NaN = not a candidate) the chosen column."""
    s = np.asarray(scores, dtype=float)
    t = np.asarray(threshold, dtype=float).reshape(-1, 1) if np.ndim(threshold) else float(threshold)
    valid = ~np.isnan(s)
    filled = np.where(valid, s, -np.inf)
    best = filled.argmax(axis=1)
    if rule == "gap":
        ok = valid & (filled >= filled.max(axis=1, keepdims=True) - t - 1e-12)
    elif rule == "absolute":
        ok = valid & (filled >= t)
    elif rule == "need":
        ref = best if strong is None else np.where(valid[:, strong], strong, best)
        p_ref = filled[np.arange(len(s)), ref][:, None]
        ok = valid & (p_ref * (1.0 - filled) <= t + 1e-12)
        ok[np.arange(len(s)), ref] = True
    else:
        raise ValueError(f"unknown rule {rule!r}")
    # Cheapest qualifying; ties on price go to the higher score.
    key = np.where(ok, prices[None, :] - 1e-9 * np.nan_to_num(s), np.inf)
    idx = key.argmin(axis=1)
    none = ~ok.any(axis=1)
    if none.any():
        fallback = best.copy()
        if strong is not None:
            fallback = np.where(valid[:, strong], strong, best)
        idx = np.where(none, fallback, idx)
    return idx


def escalation(p_strong: np.ndarray, p_cheap: np.ndarray, rule: str) -> np.ndarray:
    """The rule's preference for the stronger of two candidates, higher = more in need of it:
    the cheaper one is chosen exactly when this is at most the rule's threshold (``1 - threshold``
    for ``absolute``). What ``switchyard router score --candidates`` writes as ``escalate``."""
    ps, pc = np.asarray(p_strong, float), np.asarray(p_cheap, float)
    if rule == "gap":
        return ps - pc
    if rule == "absolute":
        return 1.0 - pc
    if rule == "need":
        return ps * (1.0 - pc)
    raise ValueError(f"unknown rule {rule!r}")


class Decision(BaseModel):
    """What the policy decided for one request, and why."""

    model_config = ConfigDict(frozen=True)

    model: str
    ranking: list[str] = Field(description="Candidates by calibrated score, best first: the fallback order.")
    threshold: float
    quality_target: float
    rule: str
    task_calibrated: bool = Field(description="Per-task thresholds (else the global table).")
    expected_cost_usd: float
    relative_cost: float = Field(description="Chosen model's price / the strong model's price.")
    margin: float = Field(description="How far the chosen score clears the qualifying line.")
    low_margin: bool
    reason: str


@dataclass(frozen=True)
class Ask:
    """One request's routing question, as the policies see it."""

    scores: dict[str, float]
    task: str | None
    quality_target: float
    max_cost_usd: float | None
    candidates: list[str] | None
    tokens: tuple[int, int]  # (prompt, completion) for cost estimates


class _Policy:
    """What every policy shares: the ``decide`` signature, token defaults and the
    :class:`Decision` it returns. Subclasses implement :meth:`_decide`."""

    def __init__(self, catalog: Catalog, *, low_margin: float = LOW_MARGIN) -> None:
        self.catalog = catalog
        self.low_margin = low_margin
        self._known = set(catalog.model_ids)
        self.strong = catalog.strong_model

    def decide(
        self,
        scores: dict[str, float],
        task: str | None,
        quality_target: float,
        max_cost_usd: float | None = None,
        candidates: list[str] | None = None,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> Decision:
        """Pick the model for one request from the router's ``scores`` (see the subclass)."""
        tokens = (
            DEFAULT_PROMPT_TOKENS if prompt_tokens is None else prompt_tokens,
            DEFAULT_COMPLETION_TOKENS if completion_tokens is None else completion_tokens,
        )
        return self._decide(Ask(scores, task, quality_target, max_cost_usd, candidates, tokens))

    def _decide(self, ask: Ask) -> Decision:
        raise NotImplementedError

    def _decision(self, chosen: str, ranking: list[str], cost: float, margin: float, **why: Any) -> Decision:
        strong_price = self.catalog.blended_price(self.strong)
        return Decision(
            model=chosen,
            ranking=ranking,
            expected_cost_usd=cost,
            relative_cost=self.catalog.blended_price(chosen) / strong_price if strong_price else 1.0,
            margin=margin,
            low_margin=abs(margin) < self.low_margin,
            **why,
        )


class RoutingPolicy(_Policy):
    """``RoutingPolicy(catalog, calibration).decide(scores, task, quality_target, ...)``: the
    cheapest candidate whose calibrated score clears the task's threshold."""

    def __init__(self, catalog: Catalog, calibration: Calibration, *, low_margin: float = LOW_MARGIN) -> None:
        super().__init__(catalog, low_margin=low_margin)
        self.calibration = calibration

    def threshold(self, task: str | None, quality_target: float) -> tuple[float, bool, list[str]]:
        """Threshold for ``quality_target`` on ``task``; per-task flag; the calibrated candidates."""
        if not 0.0 <= quality_target <= 1.0:
            raise PolicyError(f"quality_target must be within [0, 1], got {quality_target}")
        table, per_task = self.calibration.table(task)
        return table.threshold(quality_target), per_task, table.candidates

    def _decide(self, ask: Ask) -> Decision:
        """Candidates are ``ask.candidates`` (default: the models calibrated for this task)
        restricted to models that are in the catalog *and* were scored by the router."""
        scores, task, quality_target, candidates = ask.scores, ask.task, ask.quality_target, ask.candidates
        threshold, per_task, calibrated = self.threshold(task, quality_target)
        pool = list(candidates) if candidates is not None else list(calibrated)
        unknown = [m for m in pool if m not in self._known]
        if candidates is not None and unknown:
            raise PolicyError(f"unknown candidate models {unknown}")
        pool = [m for m in pool if m in self._known and m in scores and np.isfinite(scores[m])]
        if not pool:
            raise PolicyError(
                f"no candidate was scored by the router (candidates {candidates or calibrated})"
            )
        share = self.catalog.cached_share(ask.task)  # the task's expected prompt-cache reads
        cost = {m: self.catalog.model(m).price.expected_cost(*ask.tokens, share) for m in pool}
        note = ""
        if ask.max_cost_usd is not None:  # a hard cap: judged at list price (a cache read is not certain)
            worst = {m: self.catalog.model(m).price.cost(*ask.tokens) for m in pool}
            affordable = [m for m in pool if worst[m] <= ask.max_cost_usd]
            if not affordable:
                cheapest = min(pool, key=worst.__getitem__)
                affordable = [cheapest]
                note = f"; no candidate within max_cost_usd={ask.max_cost_usd}, using the cheapest"
            elif len(affordable) < len(pool):
                note = f"; {len(pool) - len(affordable)} candidate(s) over max_cost_usd"
            pool = affordable
        s = np.array([[scores[m] for m in pool]])
        prices = np.array([self.catalog.blended_price(m, task) for m in pool])
        strong = pool.index(self.strong) if self.strong in pool else None
        rule = self.calibration.rule
        idx = int(choose(s, prices, threshold, strong=strong, rule=rule)[0])
        chosen = pool[idx]
        margin = _margin(s[0], pool, chosen, strong, threshold, rule)
        line = {"gap": "score >= best - ", "absolute": "score >= ", "need": "P(ref)(1 - score) <= "}[rule]
        reason = (
            f"cheapest of {len(pool)} candidates with {line}{threshold:.4f} "
            f"({'task ' + repr(task) if per_task else 'global'} calibration, target {quality_target:.3f})"
        )
        if margin < 0:
            reason = f"no candidate cleared the threshold; fell back to {chosen}"
        return self._decision(
            chosen,
            sorted(pool, key=lambda m: -scores[m]),
            cost[chosen],
            margin,
            threshold=threshold,
            quality_target=quality_target,
            rule=rule,
            task_calibrated=per_task,
            reason=reason + note,
        )

    def candidates_for(self, task: str | None) -> list[str]:
        """The models calibrated for ``task`` (global list for unknown tasks)."""
        return list(self.calibration.table(task)[0].candidates)


def _margin(
    s: np.ndarray, pool: list[str], chosen: str, strong: int | None, threshold: float, rule: str
) -> float:
    """How far the chosen candidate clears the qualifying line (negative: nothing cleared it)."""
    p = float(s[pool.index(chosen)])
    if rule == "gap":
        return p - (float(s.max()) - threshold)
    if rule == "absolute":
        return p - threshold
    ref = strong if strong is not None else int(np.argmax(s))
    if pool[ref] == chosen:
        # the reference answers: margin of the best cheaper alternative it beat
        others = [float(s[ref]) * (1 - float(x)) for i, x in enumerate(s) if i != ref]
        return (min(others) - threshold) if others else 1.0
    return threshold - float(s[ref]) * (1.0 - p)


def ranking(scores: dict[str, float], models: Sequence[str]) -> list[str]:
    """Models by score, best first (the router's own fallback order)."""
    return sorted(models, key=lambda m: -scores.get(m, float("-inf")))


RATIO_RULE = "ratio"


class ScoreRatioPolicy(_Policy):
    """The policy for a router without calibration: the cheapest candidate whose raw score
    reaches ``quality_target`` × the strong model's score (the strong model when none does)."""

    def _decide(self, ask: Ask) -> Decision:
        catalog, scores, tokens = self.catalog, ask.scores, ask.tokens
        share = catalog.cached_share(ask.task)

        def price(m: str) -> float:
            return catalog.blended_price(m, ask.task)

        asked = ask.candidates or catalog.task_defaults(ask.task or "default").candidates or scores
        pool = [m for m in asked if m in scores]
        if not pool:
            raise PolicyError("the router scored none of the candidates")
        line = ask.quality_target * scores.get(self.strong, max(scores[m] for m in pool))
        ok = [m for m in pool if scores[m] >= line]
        if ask.max_cost_usd is not None:
            ok = [m for m in ok if catalog.model(m).price.cost(*tokens) <= ask.max_cost_usd] or ok
        if ok:
            chosen = min(ok, key=price)
        else:
            chosen = self.strong if self.strong in pool else max(pool, key=scores.__getitem__)
        return self._decision(
            chosen,
            sorted(pool, key=lambda m: -scores[m]),
            catalog.model(chosen).price.expected_cost(*tokens, share),
            scores[chosen] - line,
            threshold=line,
            quality_target=ask.quality_target,
            rule=RATIO_RULE,
            task_calibrated=False,
            reason="cheapest over target × strong",
        )


def cascade_ladder(
    catalog: Catalog,
    ranking: Sequence[str],
    routed: str,
    *,
    cheapest_first: bool,
    limit: int,
    task: str | None = None,
) -> list[str]:
    """The rungs a cascade climbs: from the cheapest ranked candidate (``cheapest_first``, the
    cascade) or from the routed model (hybrid), then each pricier ranked candidate by price (at
    ``task``'s expected cached share), the strong model last; at most ``limit`` rungs."""

    def price(m: str) -> float:
        return catalog.blended_price(m, task)

    known = set(catalog.model_ids)
    ranked = [m for m in ranking if m in known] or [routed]
    start = min(ranked, key=price) if cheapest_first else routed
    rungs = sorted({m for m in ranked if price(m) >= price(start)} - {start}, key=price)
    ladder = [start, *rungs]
    if catalog.strong_model not in ladder:
        ladder.append(catalog.strong_model)
    return ladder[:limit]

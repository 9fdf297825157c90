"""Per-task window aggregates: pure, mergeable, JSON-serialisable (the values of Faust tables).

One aggregate holds, for one task and one window: acceptance by model and by tier, escalations,
cost, cheap-tier share, a latency histogram (for percentiles) and the router's predicted vs the
observed acceptance (calibration). :func:`summarise` turns it into the numbers people read.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

from services.contracts import OutcomeEvent
from services.contracts.events import RoutingMode

# Upper bounds (ms) of the latency histogram buckets; the last bucket is open.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    10,
    25,
    50,
    100,
    200,
    300,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    10000,
    20000,
    60000,
)


def empty() -> dict[str, Any]:
    """A fresh aggregate."""
    return {
        "n": 0,
        "accepted": 0,
        "escalated": 0,
        "cost": 0.0,
        "cheap": 0,
        "by_model": {},
        "by_tier": {},
        "lat": [0] * (len(LATENCY_BUCKETS_MS) + 1),
        "pred_n": 0,
        "pred_sum": 0.0,
        "pred_obs": 0.0,
    }


def add_outcomes(
    agg: dict[str, Any] | None, outcomes: Iterable[OutcomeEvent], cheap_tier: str | None
) -> dict[str, Any]:
    """Return ``agg`` (or a fresh aggregate) with ``outcomes`` folded in (a new dict)."""
    out = (
        empty()
        if not agg
        else {
            **agg,
            "by_model": dict(agg["by_model"]),
            "by_tier": dict(agg["by_tier"]),
            "lat": list(agg["lat"]),
        }
    )
    for o in outcomes:
        if o.mode is RoutingMode.EXPLORE:  # a shadow sample: evidence, not served traffic
            out["shadow"] = out.get("shadow", 0) + 1
            continue
        acc = int(o.accepted)
        out["n"] += 1
        out["accepted"] += acc
        out["escalated"] += int(o.escalated)
        out["cost"] += o.cost_usd
        tier = o.tier or "unknown"
        out["cheap"] += int(cheap_tier is not None and tier == cheap_tier)
        m = out["by_model"].get(o.chosen_model, [0, 0])
        out["by_model"][o.chosen_model] = [m[0] + 1, m[1] + acc]
        t = out["by_tier"].get(tier, [0, 0])
        out["by_tier"][tier] = [t[0] + 1, t[1] + acc]
        out["lat"][bisect.bisect_left(LATENCY_BUCKETS_MS, o.latency_ms)] += 1
        if o.predicted is not None:
            out["pred_n"] += 1
            out["pred_sum"] += o.predicted
            out["pred_obs"] += acc
    return out


def latency_percentile(hist: list[int], q: float) -> float | None:
    """Upper bound of the bucket holding the ``q`` quantile (None when empty)."""
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank and count:
            return LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else float("inf")
    return float("inf")


def summarise(agg: dict[str, Any] | None) -> dict[str, Any]:
    """Readable numbers of one aggregate: rates, cost per request, percentiles, calibration."""
    agg = agg or empty()
    n = agg["n"]

    def rate(x: float, d: float) -> float | None:
        return x / d if d else None

    return {
        "events": n,
        "acceptance": rate(agg["accepted"], n),
        "acceptance_by_model": {
            m: {"events": v[0], "acceptance": rate(v[1], v[0])} for m, v in agg["by_model"].items()
        },
        "acceptance_by_tier": {
            t: {"events": v[0], "acceptance": rate(v[1], v[0])} for t, v in agg["by_tier"].items()
        },
        "shadow_samples": agg.get("shadow", 0),
        "escalation_rate": rate(agg["escalated"], n),
        "cost_per_request_usd": rate(agg["cost"], n),
        "cheap_tier_share": rate(agg["cheap"], n),
        "latency_ms": {f"p{int(q * 100)}": latency_percentile(agg["lat"], q) for q in (0.5, 0.95, 0.99)},
        "calibration": {
            "events": agg["pred_n"],
            "predicted": rate(agg["pred_sum"], agg["pred_n"]),
            "observed": rate(agg["pred_obs"], agg["pred_n"]),
        },
    }

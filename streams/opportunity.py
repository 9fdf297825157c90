"""Savings opportunities: a task whose traffic goes mostly to expensive tiers while the evidence
that a cheaper tier would do is missing, thin or stale — or already says it would.

The quality detectors only react when quality drops; they can never win money back. This one
watches the other side, per task, over a sliding window of its outcomes:

- **expensive share**: the share of the task's routed answers served by a tier above the
  cheapest one;
- **cheap evidence**: labelled answers of cheaper-tier models on this task (routed, or shadow
  calls of the gateway's budgeted exploration, ``mode=explore``: those count as evidence only,
  never as traffic), with their acceptance and when the last one was seen.

It fires when the expensive share is at least ``expensive_share`` over at least ``min_outcomes``
outcomes, and either the cheap evidence is missing, thin (fewer than ``min_cheap_labels``, and
their upper confidence bound does not rule the cheap tier out), stale (none for ``stale_s``), or
already good (the lower confidence bound of the cheap tier's acceptance is within
``acceptance_ratio`` of the expensive tier's acceptance on the same task).
The notice is informational (severity ``info``: it never pages) and comes with a retrain request
whose reason is ``opportunity``; it resolves when the task's expensive share falls back below
``resolve_share`` (the new router sends it to a cheaper tier) or after ``cooldown_s`` without a
reason to keep it open. State is a JSON-serialisable dict kept in the task's detector entry, so a
restarted worker carries on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.contracts import OutcomeEvent
from services.contracts.events import RoutingMode


class OpportunityConfig(BaseModel):
    """When a task counts as a savings opportunity (``SWITCHYARD_STREAMS_OPPORTUNITY__*``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Watch tasks for savings opportunities.")
    window: int = Field(default=300, ge=10, description="Outcomes per task the detector looks back over.")
    min_outcomes: int = Field(
        default=60, ge=1, description="Outcomes a task needs in the window before it can be judged."
    )
    expensive_share: float = Field(
        default=0.8, gt=0, le=1, description="Share of answers above the cheapest tier that marks a task."
    )
    resolve_share: float = Field(
        default=0.5, ge=0, lt=1, description="The notice resolves once the expensive share is below this."
    )
    min_cheap_labels: int = Field(
        default=30, ge=1, description="Fewer labelled cheap-tier answers than this is thin evidence."
    )
    stale_s: float = Field(
        default=7 * 86400.0, gt=0, description="Cheap-tier evidence older than this (s) counts as stale."
    )
    acceptance_ratio: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Cheap evidence counts as good when its acceptance bound reaches this share of the "
        "expensive tier's.",
    )
    cooldown_s: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds after a notice resolves before the task can be flagged again.",
    )


@dataclass(frozen=True)
class Opportunity:
    """A change of the detector: ``fire`` (with why) or ``resolve``."""

    kind: str
    reason: str
    evidence: dict[str, Any]
    # when the oldest outcome still in the detector's window happened (epoch s): the retrain
    # request's window starts there, so the loop reads all the evidence the decision saw
    window_start: float | None = None


def wilson_lower(successes: int, n: int, z: float = 1.64) -> float:
    """Wilson lower bound of a proportion (one-sided 95 %)."""
    if n == 0:
        return 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / denom)


def _upper_bound(successes: int, n: int, z: float = 1.64) -> float:
    """Wilson upper bound of a proportion (one-sided 95 %)."""
    return 1.0 - wilson_lower(n - successes, n, z)


class OpportunityDetector:
    """One task's detector; ``from_state``/``to_state`` round-trip it through a table entry."""

    BUCKETS = 12  # the window is kept as this many buckets of counts (a small table entry)

    def __init__(self, cfg: OpportunityConfig, cheap_tier: str | None) -> None:
        self.cfg = cfg
        self.cheap_tier = cheap_tier
        # [routed, expensive, expensive accepted, cheap labels, cheap accepted, shadow], oldest first
        self.buckets: list[list[int]] = []
        self.since: list[float | None] = []  # per bucket: when its first outcome happened (epoch s)
        self.last_cheap_ts: float | None = None
        self.firing = False
        self.resolved_at: float | None = None

    @classmethod
    def from_state(
        cls, cfg: OpportunityConfig, cheap_tier: str | None, state: dict | None
    ) -> OpportunityDetector:
        det = cls(cfg, cheap_tier)
        if state:
            det.buckets = [list(b) for b in state.get("buckets", [])]
            since = list(state.get("since") or [])
            # states written before ``since`` existed: those buckets' times are unknown
            det.since = since if len(since) == len(det.buckets) else [None] * len(det.buckets)
            det.last_cheap_ts = state.get("last_cheap_ts")
            det.firing = bool(state.get("firing"))
            det.resolved_at = state.get("resolved_at")
        return det

    def to_state(self) -> dict[str, Any]:
        return {
            "buckets": self.buckets,
            "since": self.since,
            "last_cheap_ts": self.last_cheap_ts,
            "firing": self.firing,
            "resolved_at": self.resolved_at,
        }

    def update(self, outcomes: Sequence[OutcomeEvent], now_ts: float) -> list[Opportunity]:
        """Fold a batch of the task's outcomes in; return the changes (at most one)."""
        size = max(1, self.cfg.window // self.BUCKETS)
        for o in outcomes:
            if o.cache_hit:  # a stored answer: no model was called, nothing to save or to learn
                continue
            if not self.buckets or self.buckets[-1][0] + self.buckets[-1][5] >= size:
                self.buckets.append([0, 0, 0, 0, 0, 0])
                self.since.append(o.ts.timestamp())
                drop = max(0, len(self.buckets) - self.BUCKETS)
                del self.buckets[:drop]
                del self.since[:drop]
            b = self.buckets[-1]
            shadow = o.mode is RoutingMode.EXPLORE  # evidence only: never served to anyone
            cheap = self.cheap_tier is not None and o.tier == self.cheap_tier
            b[5 if shadow else 0] += 1
            if cheap:
                b[3] += 1
                b[4] += int(o.accepted)
                ts = o.ts.timestamp()
                self.last_cheap_ts = ts if self.last_cheap_ts is None else max(self.last_cheap_ts, ts)
            elif not shadow:
                b[1] += 1
                b[2] += int(o.accepted)
        return self._judge(now_ts)

    def evidence(self, now_ts: float) -> dict[str, Any]:
        """The numbers the decision reads (also the notice's evidence)."""
        n, exp, exp_ok, cheap, cheap_ok = (sum(b[i] for b in self.buckets) for i in range(5))
        shadow = sum(b[5] for b in self.buckets if len(b) > 5)
        return {
            "outcomes": n,
            "expensive_share": exp / n if n else 0.0,
            "cheap_labels": cheap,
            "shadow_labels": shadow,
            "cheap_acceptance": cheap_ok / cheap if cheap else None,
            "cheap_acceptance_lower": wilson_lower(cheap_ok, cheap) if cheap else None,
            "cheap_acceptance_upper": _upper_bound(cheap_ok, cheap) if cheap else None,
            "expensive_acceptance": exp_ok / exp if exp else None,
            "cheap_evidence_age_s": None if self.last_cheap_ts is None else now_ts - self.last_cheap_ts,
        }

    def _why(self, ev: dict[str, Any]) -> str | None:
        cfg = self.cfg
        if ev["outcomes"] < cfg.min_outcomes or ev["expensive_share"] < cfg.expensive_share:
            return None
        exp_acc = ev["expensive_acceptance"]
        if ev["cheap_labels"] == 0:
            return "missing"
        if ev["cheap_labels"] < cfg.min_cheap_labels:
            # thin evidence counts only while it leaves room for the cheap tier to be good: a few
            # labels that already rule it out (a broken cheap model) are evidence, not its absence
            bound = ev["cheap_acceptance_upper"]
            return "thin" if exp_acc is None or bound >= cfg.acceptance_ratio * exp_acc else None
        age = ev["cheap_evidence_age_s"]
        if age is not None and age > cfg.stale_s:
            return "stale"
        if exp_acc is not None and ev["cheap_acceptance_lower"] >= cfg.acceptance_ratio * exp_acc:
            return "cheap_good"
        return None

    def _judge(self, now_ts: float) -> list[Opportunity]:
        ev = self.evidence(now_ts)
        if self.firing:
            if ev["outcomes"] >= self.cfg.min_outcomes and ev["expensive_share"] < self.cfg.resolve_share:
                self.firing, self.resolved_at = False, now_ts
                return [Opportunity("resolve", "the task is routed to cheaper tiers now", ev)]
            return []
        if self.resolved_at is not None and now_ts - self.resolved_at < self.cfg.cooldown_s:
            return []
        why = self._why(ev)
        if why is None:
            return []
        self.firing = True
        return [Opportunity("fire", why, ev, window_start=self.window_start())]

    def window_start(self) -> float | None:
        """When the oldest outcome still in the window happened (None: not known)."""
        return self.since[0] if self.since else None


REASONS = {
    "missing": "no labelled answer of a cheaper tier yet (a new task)",
    "thin": "too few labelled answers of a cheaper tier",
    "stale": "the cheaper tiers' evidence is stale",
    "cheap_good": "cheaper-tier answers are accepted about as often as the expensive tier's",
}


def summary(task: str, change: Opportunity) -> str:
    """One line for the notice."""
    ev = change.evidence
    if change.kind == "resolve":
        return f"task {task}: savings opportunity closed ({ev['expensive_share']:.0%} on expensive tiers now)"
    return (
        f"task {task}: {ev['expensive_share']:.0%} of {ev['outcomes']} answers on expensive tiers and "
        f"{REASONS[change.reason]}: exploring cheaper tiers and retraining (informational, not a page)"
    )

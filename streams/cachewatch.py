"""False hits of the gateway's semantic cache, per task, and what to do about them.

A cache hit is a call the gateway answered with a stored answer (``OutcomeEvent.cache_hit``). Its
outcome is graded like any other call (ground truth or feedback); a hit whose answer was not
acceptable is a **false hit**: a fresh answer would have had the task's usual chance of being
right, the stored one did not fit this question. Nobody else measures this per task; it is what
makes a cache safe to leave on (docs/cache.md).

Per task, over the last ``window`` graded hits, the watcher fires when the Wilson lower bound
(``z``) of the false-hit rate is above ``max_false_hit_rate`` with at least ``min_hits`` hits. The
alert carries the action the gateway takes (it reads the alerts topic; see
:mod:`services.gateway.cachepolicy`):

- **threshold**: when every false hit in the window was a near-duplicate (similarity < 1), the
  task's similarity threshold rises just above the most similar false hit
  (``max similarity + margin``), so none of those matches would be served again;
- **off**: when a false hit was an exact repeat (similarity 1: no threshold can help) or the new
  threshold would pass ``max_threshold``, the task's cache is switched off.

Each action is its own alert (the subject names it), so a later, stricter action fires anew; the
gateway applies the strictest firing one. Severity ``warning``: on the alert topic and the
on-call channel, since a person should know that a task's cache is serving wrong answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.contracts import OutcomeEvent

from .opportunity import wilson_lower

DETECTOR = "cache_false_hits"


class CacheWatchConfig(BaseModel):
    """When a task's cache serves too many wrong answers (``SWITCHYARD_STREAMS_CACHE_WATCH__*``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Watch the semantic cache's false-hit rate per task.")
    window: int = Field(default=200, ge=10, description="Graded cache hits per task looked back over.")
    min_hits: int = Field(default=20, ge=1, description="Graded hits a task needs before it can be judged.")
    max_false_hit_rate: float = Field(
        default=0.01, gt=0, lt=1, description="False-hit rate the task's cache may have (the target)."
    )
    z: float = Field(default=1.64, gt=0, description="Wilson bound's z (1.64: one-sided 95 %).")
    margin: float = Field(
        default=0.005,
        gt=0,
        lt=0.1,
        description="How far above the most similar false hit the new threshold goes.",
    )
    max_threshold: float = Field(
        default=0.995, gt=0, le=1, description="A threshold past this switches the task's cache off instead."
    )


@dataclass(frozen=True)
class CacheAction:
    """What the gateway should do for a task: raise its threshold to ``threshold``, or switch off."""

    action: str  # "threshold" | "off"
    threshold: float | None
    evidence: dict[str, Any]

    @property
    def subject(self) -> str:
        return "off" if self.action == "off" else f"threshold={self.threshold:.3f}"


class CacheWatch:
    """One task's window of graded cache hits; ``update`` returns the action to announce, if any."""

    def __init__(self, config: CacheWatchConfig, state: dict[str, Any] | None = None) -> None:
        self.config = config
        st = state or {}
        # (similarity, false) per graded hit, oldest first
        self.hits: list[tuple[float, bool]] = [(float(s), bool(f)) for s, f in st.get("hits", [])]
        self.announced: str | None = st.get("announced")  # the strictest action announced so far

    def to_state(self) -> dict[str, Any]:
        return {"hits": [[s, f] for s, f in self.hits], "announced": self.announced}

    def update(self, outcomes: Sequence[OutcomeEvent]) -> CacheAction | None:
        cfg = self.config
        for o in outcomes:
            if o.cache_hit:
                sim = o.cache_similarity if o.cache_similarity is not None else 1.0
                self.hits.append((sim, not o.accepted))
        self.hits = self.hits[-cfg.window :]
        n = len(self.hits)
        false = [s for s, f in self.hits if f]
        if n < cfg.min_hits or not false:
            return None
        lower = wilson_lower(len(false), n, cfg.z)
        if lower <= cfg.max_false_hit_rate:
            return None
        evidence = {
            "hits": n,
            "false_hits": len(false),
            "false_hit_rate": round(len(false) / n, 4),
            "false_hit_rate_lower": round(lower, 4),
            "max_false_hit_rate": cfg.max_false_hit_rate,
            "max_false_similarity": round(max(false), 4),
        }
        threshold = round(max(false) + cfg.margin, 3)
        if max(false) >= 0.9999 or threshold > cfg.max_threshold:
            action = CacheAction("off", None, {**evidence, "action": "off"})
        else:
            evidence = {**evidence, "action": "threshold", "threshold": threshold}
            action = CacheAction("threshold", threshold, evidence)
        if self.announced == "off" or (
            action.action == "threshold"
            and self.announced is not None
            and float(self.announced.split("=")[1]) >= threshold
        ):
            return None  # nothing stricter than what the gateway already does
        self.announced = action.subject
        # the window starts afresh: the next action is judged on hits served under this one
        self.hits = []
        return action


def summary(task: str, action: CacheAction) -> str:
    e = action.evidence
    what = (
        "switched the task's cache off"
        if action.action == "off"
        else f"raised the task's similarity threshold to {action.threshold:.3f}"
    )
    return (
        f"semantic cache of task {task}: {e['false_hits']} of {e['hits']} graded hits were wrong "
        f"(false-hit rate {e['false_hit_rate']:.1%}, lower bound {e['false_hit_rate_lower']:.1%} > "
        f"{e['max_false_hit_rate']:.1%}); the gateway {what}"
    )

"""Fault injection, quality drift and latency profiles: pure, seeded, unit-testable.

Faults are set per model (or ``"*"`` for every model without its own rule) at start (a YAML/JSON
config) and at run time (``POST /emulator/faults``). A rule can be limited to one provider name
the emulator serves under (``/p/<provider>/...``, provider arbitrage): key ``model@provider``
(or ``*@provider``); such a rule wins over the model's own and the wildcard, for that provider's
requests only. One uniform draw per request picks at most
one fault from the cumulative rates, in this order: 429 with ``Retry-After``, error status, hang,
malformed JSON, stream cut. The draws come from a per-model RNG seeded from the emulator seed, so
a run with the same seed and request order injects the same faults.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .corpus import _unit

FaultKind = Literal["none", "rate_limit", "error", "hang", "malformed", "stream_cut"]
WILDCARD = "*"


class FaultSpec(BaseModel):
    """Faults of one model. Rates are probabilities per request; their sum must be at most 1."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_rate: float = Field(default=0.0, ge=0, le=1, description="Share answered 429.")
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After sent with a 429.")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share answered with an error status.")
    error_statuses: list[int] = Field(default_factory=lambda: [500], min_length=1)
    hang_rate: float = Field(default=0.0, ge=0, le=1, description="Share that hangs before answering.")
    hang_s: float = Field(default=30.0, ge=0, description="How long a hang lasts (not scaled by speed).")
    malformed_rate: float = Field(default=0.0, ge=0, le=1, description="Share answered 200 with broken JSON.")
    stream_cut_rate: float = Field(default=0.0, ge=0, le=1, description="Share of streams cut mid-answer.")
    stream_cut_after: int = Field(default=1, ge=0, description="Chunks sent before the cut.")
    stream_cut_mode: Literal["drop", "eof"] = Field(
        default="drop", description="drop: the connection breaks; eof: the stream ends without [DONE]."
    )
    max_faults: int | None = Field(default=None, ge=0, description="Stop injecting after this many faults.")

    @field_validator("error_statuses")
    @classmethod
    def _statuses(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 400 <= s <= 599]
        if bad:
            raise ValueError(f"error_statuses must be HTTP error codes (400-599), got {bad}")
        return v

    @model_validator(mode="after")
    def _sum(self) -> FaultSpec:
        total = (
            self.rate_limit_rate
            + self.error_rate
            + self.hang_rate
            + self.malformed_rate
            + self.stream_cut_rate
        )
        if total > 1 + 1e-9:
            raise ValueError(f"fault rates sum to {total:.3f}; they must sum to at most 1")
        return self


def fault_key(model: str, provider: str | None) -> str:
    """The fault table key of ``model`` (or ``*``) at ``provider``: ``model@provider``."""
    return model if provider is None else f"{model}@{provider}"


@dataclass(frozen=True)
class FaultDecision:
    """The fault (if any) one request gets."""

    kind: FaultKind = "none"
    status: int = 200
    retry_after_s: float = 0.0
    hang_s: float = 0.0
    cut_after: int = 0
    cut_mode: str = "drop"


NO_FAULT = FaultDecision()


class FaultTable:
    """Per-model fault specs with seeded draws and counters of what was injected."""

    def __init__(self, seed: int = 0, specs: dict[str, FaultSpec] | None = None) -> None:
        self.seed = seed
        self.specs: dict[str, FaultSpec] = dict(specs or {})
        self._rngs: dict[str, random.Random] = {}
        self._injected: dict[str, int] = {}

    def set(self, model: str, spec: FaultSpec, provider: str | None = None) -> None:
        """Set (replace) the faults of a model (``"*"``: every model without its own rule), for
        requests under ``provider`` only when given."""
        key = fault_key(model, provider)
        self.specs[key] = spec
        self._injected[key] = 0

    def clear(self, model: str | None = None, provider: str | None = None) -> None:
        """Remove the faults of one model (at one provider, when given), or all."""
        if model is None and provider is None:
            self.specs.clear()
            self._injected.clear()
        elif model is None:
            for key in [k for k in self.specs if k.endswith(f"@{provider}")]:
                self.specs.pop(key, None)
                self._injected.pop(key, None)
        else:
            key = fault_key(model, provider)
            self.specs.pop(key, None)
            self._injected.pop(key, None)

    def _rng(self, model: str) -> random.Random:
        rng = self._rngs.get(model)
        if rng is None:
            rng = self._rngs[model] = random.Random(f"{self.seed}:{model}")
        return rng

    def decide(self, model: str, stream: bool, provider: str | None = None) -> FaultDecision:
        """The fault for the next request to ``model`` (under ``provider``, when the request came
        through ``/p/<provider>/``): one draw from the RNG of the model (at that provider)."""
        candidates = [model, WILDCARD]
        if provider is not None:
            candidates = [fault_key(model, provider), fault_key(WILDCARD, provider), *candidates]
        key = next((k for k in candidates if k in self.specs), WILDCARD)
        spec = self.specs.get(key)
        if spec is None:
            return NO_FAULT
        if spec.max_faults is not None and self._injected.get(key, 0) >= spec.max_faults:
            return NO_FAULT
        rng = self._rng(fault_key(model, provider))
        u = rng.random()
        decision = NO_FAULT
        edge = spec.rate_limit_rate
        if u < edge:
            decision = FaultDecision("rate_limit", 429, retry_after_s=spec.retry_after_s)
        elif u < (edge := edge + spec.error_rate):
            status = spec.error_statuses[int(rng.random() * len(spec.error_statuses))]
            decision = FaultDecision("error", status)
        elif u < (edge := edge + spec.hang_rate):
            decision = FaultDecision("hang", hang_s=spec.hang_s)
        elif u < (edge := edge + spec.malformed_rate):
            decision = FaultDecision("malformed")
        elif u < edge + spec.stream_cut_rate and stream:
            decision = FaultDecision(
                "stream_cut", cut_after=spec.stream_cut_after, cut_mode=spec.stream_cut_mode
            )
        if decision.kind != "none":
            self._injected[key] = self._injected.get(key, 0) + 1
        return decision

    def snapshot(self) -> dict[str, dict]:
        return {
            m: {**s.model_dump(), "injected": self._injected.get(m, 0)} for m, s in sorted(self.specs.items())
        }


class DriftRule(BaseModel):
    """From ``start_at`` on, ``model`` answers prompts of ``task`` wrongly (a share ``wrong_rate``).

    ``task`` matches a task name (e.g. ``gsm8k``, ``abstract_algebra``, ``mbpp``) or a dataset name
    (``mmlu``, ``gsm8k``, ``routerbench``) or ``"*"``. Which prompts drift is a deterministic
    function of the prompt and model, so a rate below 1 picks the same prompts every run.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    task: str = Field(min_length=1)
    wrong_rate: float = Field(default=1.0, ge=0, le=1)
    start_at: float | None = Field(default=None, description="Unix time the drift starts; default now.")
    start_in_s: float | None = Field(default=None, ge=0, description="Or: seconds from now.")

    def resolved(self, now: float) -> DriftRule:
        """A copy with an absolute ``start_at``."""
        start = self.start_at if self.start_at is not None else now + (self.start_in_s or 0.0)
        return self.model_copy(update={"start_at": start, "start_in_s": None})

    def applies(self, model: str, task: str, dataset: str, p_hash: str, now: float) -> bool:
        if self.model != model or self.task not in (task, dataset, WILDCARD):
            return False
        if self.start_at is not None and now < self.start_at:
            return False
        return self.wrong_rate >= 1 or _unit("drift", p_hash, model) < self.wrong_rate


class DriftTable:
    """The active drift rules."""

    def __init__(
        self, rules: list[DriftRule] | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self._clock = clock or time.time
        self.rules: list[DriftRule] = [r.resolved(self._clock()) for r in rules or []]

    def add(self, rule: DriftRule) -> DriftRule:
        resolved = rule.resolved(self._clock())
        self.rules.append(resolved)
        return resolved

    def clear(self) -> None:
        self.rules.clear()

    def is_drifted(self, model: str, task: str, dataset: str, p_hash: str, now: float | None = None) -> bool:
        """Whether ``model``'s answer to this prompt is drifted at ``now``."""
        if not self.rules:
            return False
        t = self._clock() if now is None else now
        return any(r.applies(model, task, dataset, p_hash, t) for r in self.rules)


class LatencyProfile(BaseModel):
    """Time to first token and decode speed of one model; jitter is a ± share applied to both."""

    model_config = ConfigDict(extra="forbid")

    ttft_s: float = Field(default=0.4, ge=0)
    tokens_per_s: float = Field(default=60.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)


TIER_LATENCY: dict[str, LatencyProfile] = {
    "frontier": LatencyProfile(ttft_s=0.6, tokens_per_s=40.0),
    "mid": LatencyProfile(ttft_s=0.35, tokens_per_s=70.0),
    "budget": LatencyProfile(ttft_s=0.2, tokens_per_s=110.0),
}


class Latency:
    """Sleeps to take per request, from per-model profiles and a global speed factor (0 = none)."""

    def __init__(self, profiles: dict[str, LatencyProfile], speed: float, seed: int = 0) -> None:
        self.profiles = profiles
        self.speed = speed
        self._rng = random.Random(f"latency:{seed}")
        self._default = LatencyProfile()

    def _jitter(self, p: LatencyProfile) -> float:
        return 1.0 + p.jitter * (2 * self._rng.random() - 1) if p.jitter else 1.0

    def ttft(self, model: str) -> float:
        """Seconds before the first token (0 when speed is 0)."""
        if self.speed <= 0:
            return 0.0
        p = self.profiles.get(model, self._default)
        return p.ttft_s * self._jitter(p) * self.speed

    def decode(self, model: str, tokens: int) -> float:
        """Seconds to produce ``tokens`` tokens after the first (0 when speed is 0)."""
        if self.speed <= 0 or tokens <= 0:
            return 0.0
        p = self.profiles.get(model, self._default)
        return tokens / p.tokens_per_s * self._jitter(p) * self.speed

"""Provider arbitrage: which seller of a model the pool tries first.

A catalog model can be sold by several providers (``ModelEntry.all_offers``: the listed
provider/price plus ``offers``). For each call the pool tries a model's offers in this order and
fails over along it before it falls back to the next model:

1. **Healthy before open.** An offer whose breaker is open goes last (and is skipped when
   reached); a half-open one keeps its place, so its probes find out whether it recovered.
2. **Fast before slow.** An offer is *slow* when its recent latency (an EWMA of its successful
   calls: time to the answer, or to the first token for streams, kept apart) is above
   ``slow_factor`` times the fastest offer's and at least ``slow_min_gap_s`` above it. Slow
   offers go after the others. An estimate older than ``latency_ttl_s`` is forgotten, so a
   demoted offer gets traffic again (and a fresh estimate) once that time has passed.
3. **Cheapest first.** Within each group, by blended price ((input + output) / 2 per 1M tokens,
   as routing ranks models), ties in catalog order (the listed offer first).

Pure and clock-injectable, so the rule is unit-tested without HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.catalog import Offer


@dataclass(frozen=True)
class ArbitragePolicy:
    """How the pool picks among a model's offers (``SWITCHYARD_GATEWAY_ARBITRAGE_*``).
    ``enabled=False``: only the listed offer is used (the catalog before offers existed)."""

    enabled: bool = True
    slow_factor: float = 3.0
    slow_min_gap_s: float = 0.5
    latency_alpha: float = 0.2
    latency_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        if self.slow_factor < 1:
            raise ValueError("slow_factor must be at least 1")
        if not 0 < self.latency_alpha <= 1:
            raise ValueError("latency_alpha must be within (0, 1]")
        if self.slow_min_gap_s < 0 or self.latency_ttl_s <= 0:
            raise ValueError("slow_min_gap_s must be >= 0 and latency_ttl_s positive")


class LatencyBoard:
    """Recent latency per key (an offer and a call kind): an EWMA of successful calls that is
    forgotten ``ttl_s`` after its last sample."""

    def __init__(self, alpha: float = 0.2, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.alpha = alpha
        self.ttl_s = ttl_s
        self._clock = clock
        self._ewma: dict[str, tuple[float, float]] = {}  # key -> (seconds, time of the last sample)

    def record(self, key: str, seconds: float) -> None:
        """A successful call on ``key`` took ``seconds``."""
        now = self._clock()
        old = self.estimate(key)
        value = seconds if old is None else old + self.alpha * (seconds - old)
        self._ewma[key] = (value, now)

    def estimate(self, key: str) -> float | None:
        """The recent latency of ``key`` in seconds; ``None`` when unknown or stale."""
        entry = self._ewma.get(key)
        if entry is None or self._clock() - entry[1] > self.ttl_s:
            return None
        return entry[0]

    def snapshot(self) -> dict[str, float]:
        """Every fresh estimate, by key (for logs and benchmarks)."""
        return {k: v for k in self._ewma if (v := self.estimate(k)) is not None}


def order_offers(
    offers: Sequence[Offer],
    policy: ArbitragePolicy,
    is_open: Callable[[Offer], bool],
    latency_s: Callable[[Offer], float | None],
) -> list[Offer]:
    """``offers`` in the order to try them (see the module docstring)."""
    if len(offers) <= 1:
        return list(offers)
    open_ = [is_open(o) for o in offers]
    lat = [latency_s(o) for o in offers]
    known = [x for x in lat if x is not None]
    fastest = min(known) if known else None

    def slow(x: float | None) -> bool:
        if x is None or fastest is None:
            return False
        return x > policy.slow_factor * fastest and x - fastest >= policy.slow_min_gap_s

    keys = [(open_[i], slow(lat[i]), o.price.blended(), i) for i, o in enumerate(offers)]
    return [offers[k[3]] for k in sorted(keys)]

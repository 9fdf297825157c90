"""A circuit breaker per upstream deployment (closed → open → half-open → closed).

Small on purpose: asyncio-friendly without locks (the state changes in one event loop), its state
is readable synchronously for the ``/metrics`` gauge, and the clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_timeout_s`` lets
    ``half_open_max`` probe calls through; a probe success closes it, a probe failure re-opens it."""

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout_s: float = 10.0,
        half_open_max: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ):
        if failure_threshold < 1 or reset_timeout_s <= 0 or half_open_max < 1:
            raise ValueError("failure_threshold>=1, reset_timeout_s>0 and half_open_max>=1 are required")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max = half_open_max
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose timeout passed reads as half-open."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._set(BreakerState.HALF_OPEN)
            self._probes = 0
        return self._state

    def allow(self) -> bool:
        """Whether a call may go through now (counts a half-open probe when it does)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self.half_open_max:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        """A call succeeded: reset the failure count; a half-open breaker closes."""
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """A call failed: count it; open at the threshold, re-open on a failed probe."""
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change:
                self._on_change(self.name, state)

"""A circuit breaker per upstream deployment (closed → open → half-open → closed), on a failure
*rate*, not a run of failures.

- **Closed.** Outcomes go into a rolling time window of one-second buckets. The breaker opens when
  the window holds at least ``min_calls`` outcomes and at least ``failure_rate`` of them failed: a
  flaky upstream (30 % of calls failing, retried and falling back) keeps serving, a dead one
  (every call failing) stops getting traffic within a second or two of volume.
- **Open.** No calls for ``reset_timeout_s``; the pool falls back to the next model.
- **Half-open.** Up to ``half_open_probes`` calls go through at once. When that many probe
  outcomes are in, the breaker closes if their failure share is below ``failure_rate`` and
  re-opens otherwise (early, as soon as the failures alone decide it). A probe whose caller gave
  up (cancellation) frees its slot without a verdict: a half-open breaker can never be stuck
  waiting for a probe nobody will finish.

Which failures count is the caller's call (:meth:`CircuitBreaker.record_failure` vs
:meth:`record_ignored`): the provider pool counts 5xx, timeouts, transport errors and malformed
answers; a client 4xx or a 429 (rate limiting, answered by waiting ``Retry-After``) never counts.

Small and hand-written on purpose (the asyncio-capable breaker libraries on PyPI, such as
``pybreaker`` and ``aiobreaker``, open on consecutive failures only): asyncio-friendly without
locks (one event loop), its state readable synchronously for the ``/metrics`` gauge, the clock
injectable for tests.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers (``SWITCHYARD_GATEWAY_BREAKER_*``)."""

    failure_rate: float = 0.5
    min_calls: int = 20
    window_s: float = 10.0
    reset_timeout_s: float = 5.0
    half_open_probes: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be within (0, 1]")
        if self.min_calls < 1 or self.half_open_probes < 1:
            raise ValueError("min_calls and half_open_probes must be at least 1")
        if self.window_s <= 0 or self.reset_timeout_s <= 0:
            raise ValueError("window_s and reset_timeout_s must be positive")


class CircuitBreaker:
    """One upstream's breaker. ``ticket = acquire()`` before a call (``None``: do not call);
    then exactly one of ``record_success``, ``record_failure``, ``record_ignored`` or
    ``record_cancelled`` with that ticket. A ticket names the state episode it was issued in, so
    a call admitted before the breaker opened never counts as a half-open probe."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ):
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures], oldest first
        self._opened_at = 0.0
        self._in_flight = 0  # half-open probes out
        self._probe_ok = 0
        self._probe_failed = 0
        self._epoch = 0  # bumped at every state change

    # -- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose timeout passed reads as half-open."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.policy.reset_timeout_s
        ):
            self._in_flight = self._probe_ok = self._probe_failed = 0
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def window(self) -> tuple[int, int]:
        """(calls, failures) in the rolling window now."""
        self._expire(self._clock())
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def acquire(self) -> int | None:
        """A ticket for one call now (taking a probe slot when half-open), or ``None``."""
        state = self.state
        if state is BreakerState.CLOSED:
            return self._epoch
        probes = self._in_flight + self._decided()
        if state is BreakerState.HALF_OPEN and probes < self.policy.half_open_probes:
            self._in_flight += 1
            return self._epoch
        return None

    def allow(self) -> bool:
        """Whether a call may go through now (for callers that do not report outcomes)."""
        ticket = self.acquire()
        if ticket is not None and self._state is BreakerState.HALF_OPEN:
            self._release_probe(ticket)
        return ticket is not None

    # -- outcomes ---------------------------------------------------------------------------------

    def record_success(self, ticket: int | None = None) -> None:
        """The call succeeded."""
        self._outcome(False, ticket)

    def record_failure(self, ticket: int | None = None) -> None:
        """The call failed in a way that says the upstream is unhealthy (5xx, timeout, transport,
        malformed answer)."""
        self._outcome(True, ticket)

    def record_ignored(self, ticket: int | None = None) -> None:
        """The call ended in an answer that says nothing about the upstream's health (a client
        4xx, a 429): no verdict, but a half-open probe slot is freed."""
        self._release_probe(ticket)

    def record_cancelled(self, ticket: int | None = None) -> None:
        """The caller gave up before the call ended: no verdict; a half-open probe slot is freed."""
        self._release_probe(ticket)

    # -- internals --------------------------------------------------------------------------------

    def _decided(self) -> int:
        return self._probe_ok + self._probe_failed

    def _current(self, ticket: int | None) -> bool:
        return ticket is None or ticket == self._epoch

    def _release_probe(self, ticket: int | None = None) -> None:
        if self._state is BreakerState.HALF_OPEN and self._in_flight > 0 and self._current(ticket):
            self._in_flight -= 1

    def _outcome(self, failed: bool, ticket: int | None) -> None:
        now = self._clock()
        state = self.state
        if not self._current(ticket):
            if state is BreakerState.CLOSED:
                self._add(now, failed)  # admitted in an earlier episode: counts as plain traffic
            return
        if state is BreakerState.HALF_OPEN:
            self._in_flight = max(self._in_flight - 1, 0)
            if failed:
                self._probe_failed += 1
            else:
                self._probe_ok += 1
            self._judge_probes(now)
            return
        if self._state is BreakerState.OPEN:
            return  # a call admitted before the breaker opened: the window is reset anyway
        self._add(now, failed)
        calls, failures = self.window()
        if calls >= self.policy.min_calls and failures >= self.policy.failure_rate * calls:
            self._open(now)

    def _judge_probes(self, now: float) -> None:
        n, p = self.policy.half_open_probes, self.policy.failure_rate
        too_many = math.ceil(p * n - 1e-9)  # failures that reach the rate whatever the rest do
        if self._probe_failed >= too_many:
            self._open(now)
        elif self._decided() >= n:
            self._buckets.clear()
            self._set(BreakerState.CLOSED)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._buckets.clear()
        self._in_flight = self._probe_ok = self._probe_failed = 0
        self._set(BreakerState.OPEN)

    def _add(self, now: float, failed: bool) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
        else:
            bucket = [second, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += int(failed)

    def _expire(self, now: float) -> None:
        oldest = now - self.policy.window_s
        while self._buckets and self._buckets[0][0] + 1 <= oldest:
            self._buckets.popleft()

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            self._epoch += 1
            if self._on_change:
                self._on_change(self.name, state)

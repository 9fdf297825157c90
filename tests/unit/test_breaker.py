"""The circuit breaker opens, half-opens after its timeout, and closes on a good probe."""

import pytest

from services.providers.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_threshold_and_recovers_through_half_open() -> None:
    clock, changes = Clock(), []
    b = CircuitBreaker(
        "up/m", failure_threshold=3, reset_timeout_s=10, clock=clock, on_change=lambda n, s: changes.append(s)
    )
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.t = 9.9
    assert not b.allow()
    clock.t = 10.0
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the one probe
    assert not b.allow()  # no second probe while the first is out
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_reopens_for_a_full_timeout() -> None:
    clock = Clock()
    b = CircuitBreaker("x", failure_threshold=1, reset_timeout_s=5, clock=clock)
    b.record_failure()
    clock.t = 5
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.t = 9
    assert not b.allow()
    clock.t = 10
    assert b.allow()


def test_success_resets_consecutive_failures() -> None:
    b = CircuitBreaker("x", failure_threshold=2, reset_timeout_s=5)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state is BreakerState.CLOSED


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failure_threshold=0)

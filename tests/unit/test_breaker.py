"""The circuit breaker opens on a failure rate over a rolling window with a minimum volume, probes
with several calls when half-open, and can never be stuck half-open by a probe nobody finishes."""

import random

import pytest

from services.providers.breaker import BreakerPolicy, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(b: CircuitBreaker, outcomes: list[bool]) -> int:
    """Call through ``b`` once per outcome (True = failure); return how many calls it refused."""
    refused = 0
    for failed in outcomes:
        ticket = b.acquire()
        if ticket is None:
            refused += 1
        elif failed:
            b.record_failure(ticket)
        else:
            b.record_success(ticket)
    return refused


def test_a_flaky_upstream_keeps_serving_a_dead_one_is_cut_off() -> None:
    clock, rng = Clock(), random.Random(7)
    flaky = CircuitBreaker("flaky", BreakerPolicy(failure_rate=0.5, min_calls=20), clock=clock)
    for _ in range(600):  # 60 s at 10 calls/s, 30 % failing
        clock.t += 0.1
        assert run(flaky, [rng.random() < 0.3]) == 0
    assert flaky.state is BreakerState.CLOSED

    dead = CircuitBreaker("dead", BreakerPolicy(failure_rate=0.5, min_calls=20), clock=clock)
    assert run(dead, [True] * 19) == 0 and dead.state is BreakerState.CLOSED  # below the volume
    run(dead, [True])
    assert dead.state is BreakerState.OPEN and dead.acquire() is None


def test_failures_age_out_of_the_window() -> None:
    clock = Clock()
    b = CircuitBreaker("x", BreakerPolicy(failure_rate=0.5, min_calls=10, window_s=10), clock=clock)
    run(b, [True] * 9)
    clock.t = 11.0  # the nine failures are older than the window now
    run(b, [False] * 5 + [True] * 4)
    assert b.window() == (9, 4) and b.state is BreakerState.CLOSED


def test_half_open_admits_several_probes_and_their_share_decides() -> None:
    clock, changes = Clock(), []
    policy = BreakerPolicy(failure_rate=0.5, min_calls=4, reset_timeout_s=5, half_open_probes=4)
    b = CircuitBreaker("x", policy, clock=clock, on_change=lambda n, s: changes.append(s))
    run(b, [True] * 4)
    assert b.state is BreakerState.OPEN
    clock.t = 4.9
    assert b.acquire() is None
    clock.t = 5.0
    tickets = [b.acquire() for _ in range(5)]
    assert None not in tickets[:4] and tickets[4] is None  # four probes at once, not a fifth
    b.record_failure(tickets[0])  # one failure in four is under the rate
    for t in tickets[1:4]:
        b.record_success(t)
    assert b.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probes_reopen_for_a_full_timeout() -> None:
    clock = Clock()
    b = CircuitBreaker("x", BreakerPolicy(min_calls=1, reset_timeout_s=5, half_open_probes=4), clock=clock)
    run(b, [True])
    clock.t = 5
    t1, t2 = b.acquire(), b.acquire()
    b.record_failure(t1)
    assert b.state is BreakerState.HALF_OPEN  # one failure of four does not decide yet
    b.record_failure(t2)
    assert b.state is BreakerState.OPEN  # two of four reach the 50 % rate whatever the rest do
    clock.t = 9
    assert b.acquire() is None
    clock.t = 10
    assert b.acquire() is not None


def test_a_cancelled_probe_frees_its_slot_instead_of_sticking_half_open() -> None:
    clock = Clock()
    b = CircuitBreaker("x", BreakerPolicy(min_calls=1, reset_timeout_s=5, half_open_probes=1), clock=clock)
    run(b, [True])
    clock.t = 5
    probe = b.acquire()
    assert probe is not None and b.acquire() is None
    b.record_cancelled(probe)  # the client gave up while the probe was out
    retry = b.acquire()
    assert retry is not None
    b.record_success(retry)
    assert b.state is BreakerState.CLOSED


def test_ignored_outcomes_free_the_probe_and_do_not_count() -> None:
    clock = Clock()
    b = CircuitBreaker("x", BreakerPolicy(min_calls=2), clock=clock)
    for _ in range(10):
        b.record_ignored(b.acquire())
    assert b.window() == (0, 0) and b.state is BreakerState.CLOSED


def test_a_call_admitted_before_the_breaker_opened_is_not_a_probe() -> None:
    clock = Clock()
    b = CircuitBreaker("x", BreakerPolicy(min_calls=2, reset_timeout_s=5, half_open_probes=2), clock=clock)
    slow = b.acquire()  # admitted while closed, still running
    run(b, [True, True])
    clock.t = 5
    probe = b.acquire()
    b.record_failure(slow)  # the old call fails late: it must not decide the half-open episode
    assert b.state is BreakerState.HALF_OPEN
    b.record_success(probe)
    b.record_success(b.acquire())
    assert b.state is BreakerState.CLOSED


def test_rejects_bad_settings() -> None:
    for bad in ({"failure_rate": 0}, {"min_calls": 0}, {"half_open_probes": 0}, {"window_s": 0}):
        with pytest.raises(ValueError):
            BreakerPolicy(**bad)

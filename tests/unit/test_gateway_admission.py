"""Overload control of the router replica (``RouterAdmission``): pure logic, a fake clock."""

from __future__ import annotations

import pytest

from services.gateway.deployments import RouterAdmission


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_admits_everything_until_a_scoring_time_is_known():
    a = RouterAdmission(clock=Clock())
    deadlines = [a.admit(0.5) for _ in range(1000)]
    assert a.pending == 1000 and a.shed == 0
    assert deadlines[0] == pytest.approx(100.5)
    assert a.admit(None) is None  # no budget: no deadline, never refused


def test_refuses_at_once_when_the_queue_ahead_outlasts_the_budget():
    a = RouterAdmission(clock=Clock())
    a.scored(4, 0.4)  # 100 ms a query
    for _ in range(4):
        a.admit(0.5)  # 1..4 queued: up to 400 ms ahead, within 500 ms
    a.admit(0.5)  # the 5th: exactly 500 ms, still within
    with pytest.raises(TimeoutError, match="router busy: 5 queued"):
        a.admit(0.5)
    assert a.shed == 1 and a.pending == 5
    a.done()
    a.admit(0.5)  # one answered: room again
    assert a.pending == 5
    a.admit(None)  # callers without a budget are never refused
    assert a.shed == 1


def test_skips_queued_requests_whose_deadline_passed():
    clock = Clock()
    a = RouterAdmission(clock=clock)
    d1, d2, d3 = a.admit(1.0), a.admit(3.0), a.admit(None)
    clock.t += 2.0
    assert a.live([d1, d2, d3]) == [1, 2]
    assert a.expired == 1
    clock.t += 5.0
    assert a.live([d2, d3]) == [1]
    assert a.stats()["expired_unscored"] == 2


def test_scoring_time_is_a_moving_average_per_query():
    a = RouterAdmission(clock=Clock(), smoothing=0.5)
    a.scored(10, 1.0)  # first batch sets it: 100 ms
    assert a.per_query_s == pytest.approx(0.1)
    a.scored(2, 0.0)  # a batch of cache hits pulls it down halfway
    assert a.per_query_s == pytest.approx(0.05)
    a.scored(0, 5.0)  # an empty batch (all expired) says nothing
    assert a.per_query_s == pytest.approx(0.05)
    assert a.stats()["per_query_ms"] == pytest.approx(50.0)

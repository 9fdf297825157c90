"""Limits across replicas (services/gateway/ratelimit.py) without a store server: the token bucket
→ sliding window mapping, the wait a 429 reports, URL checks and redaction, and failing open when
the shared store refuses connections (a closed local port: a real refusal, not a mock)."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from pydantic import ValidationError

from services.errors import RateLimited
from services.gateway.ratelimit import (
    AuthFailureLimiter,
    LimitStore,
    RateLimiter,
    SharedBudget,
    Window,
    check_store_url,
    redact_url,
)
from services.gateway.settings import GatewaySettings

T0 = 60_000.0 * 60  # the start of a minute: the in-process store's windows are aligned to the clock


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [T0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    return now


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.parametrize(
    ("rate", "burst", "window"),
    [
        (2, 2, Window(2, 1)),
        (10, 20, Window(20, 2)),  # the default burst (2 × rate): a 2 s window
        (0.5, 1, Window(1, 2)),
        (7, 10, Window(14, 2)),  # 10/7 s rounds up to 2 s; the rate (7/s) is kept, not the burst
        (1 / 60, 5, Window(5, 300)),
    ],
)
def test_a_token_bucket_becomes_a_window_that_keeps_its_rate(rate, burst, window) -> None:
    assert Window.bucket(rate, burst) == window
    assert RateLimiter(rate, burst).window == window


@pytest.mark.parametrize(
    ("view", "wait"),
    [
        ((0, 0.0, 0, 0.0), 0.0),  # an unused key
        ((0, 0.0, 2, 2.0), 1.5),  # full this window (1 s left): it must become the last one and decay
        ((2, 0.5, 0, 1.5), 0.0),  # half of the last window still weighs: 1 of 2 left
        ((2, 1.0, 0, 2.0), 0.5),  # the window just turned: wait until the last one weighs < 1
        ((4, 1.0, 0, 2.0), 0.75),  # the last window held twice the limit: 3/4 of it must pass
    ],
)
def test_the_wait_for_room_follows_the_weighted_count(view, wait) -> None:
    assert Window(2, 1).wait_s(*view) == pytest.approx(wait)


async def test_rate_limiter_spends_per_key_and_reports_the_wait(clock) -> None:
    rl = RateLimiter(rate=2, burst=2)
    await rl.check("k")
    await rl.check("k")
    with pytest.raises(RateLimited) as info:
        await rl.check("k")
    h = info.value.headers
    assert h["retry-after"] == "2"  # whole seconds, rounded up from the exact wait below
    assert h["x-ratelimit-reset-requests"] == "1.500s" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-limit-requests"] == "2"
    await rl.check("other")  # per key
    clock[0] += 1.5  # half-way through the next window the last one weighs 1: one request fits
    await rl.check("k")
    with pytest.raises(RateLimited):
        await rl.check("k")


async def test_a_zero_rate_is_unlimited_and_never_touches_the_store() -> None:
    store = LimitStore(f"redis://127.0.0.1:{_closed_port()}/0")
    rl = RateLimiter(0, store=store)
    for _ in range(100):
        await rl.check("k")
    assert store.errors == 0


async def test_failed_authentications_block_a_source_for_a_sliding_minute(clock) -> None:
    af = AuthFailureLimiter(per_minute=3)
    for _ in range(3):
        await af.blocked("10.0.0.1")
        await af.failed("10.0.0.1")
    with pytest.raises(RateLimited) as info:
        await af.blocked("10.0.0.1")
    assert int(info.value.headers["retry-after"]) == 80  # the rest of this minute + 1/3 of the next
    await af.blocked("10.0.0.2")  # per source
    clock[0] += 80
    await af.blocked("10.0.0.1")


async def test_the_shared_budget_refuses_what_does_not_fit_and_charges_the_excess(clock) -> None:
    budget = SharedBudget(0.01, LimitStore())
    assert await budget.admit("task", 0.006)
    assert not await budget.admit("task", 0.005)  # 0.011 > 0.01: refused, nothing spent
    assert await budget.admit("other", 0.005)  # per task
    await budget.charge("task", 0.003)  # the call cost more than its estimate
    assert not await budget.admit("task", 0.002)
    assert await budget.admit("task", 0.001)


@pytest.mark.parametrize(
    "url",
    ["memory://", "redis://localhost", "redis://:pw@10.0.0.5:6379/2", "rediss://user:pw@cache.example:6380/0"],
)
def test_store_urls_that_are_accepted(url) -> None:
    assert check_store_url(url) == url
    assert GatewaySettings(rate_limit_storage=url).rate_limit_storage == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("memcached://x:11211", "unsupported rate-limit store 'memcached://'"),
        ("redis://:s3cret@:6379", "names no host"),
        ("redis://:s3cret@h:6379/zero", "must be a number"),
        ("redis://:s3cret@h:port", "not a URL"),
        ("localhost:6379", "unsupported"),
    ],
)
def test_bad_store_urls_are_refused_clearly_without_the_password(url, says) -> None:
    with pytest.raises(ValidationError) as info:
        GatewaySettings(rate_limit_storage=url)
    assert says in str(info.value) and "s3cret" not in str(info.value)


def test_redaction_hides_every_password_form() -> None:
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:p@ss@h/1") == "rediss://user:***@h/1"
    assert redact_url("redis://h:6379/0?password=pw&ssl_cert_reqs=none") == (
        "redis://h:6379/0?password=***&ssl_cert_reqs=none"
    )
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("memory://") == "memory://"


async def test_a_refused_store_fails_open_to_this_replicas_memory(clock, caplog) -> None:
    """Connections refused: every request is still decided (by the in-process counters), errors are
    counted, the state flips once (one warning, not one per request), the status names the store
    without its password, and the store is retried only after ``retry_s``."""
    errors, states = [], []
    monotonic = [0.0]
    store = LimitStore(
        f"redis://:hunter2@127.0.0.1:{_closed_port()}/0",
        timeout_s=0.5,
        retry_s=5.0,
        on_error=lambda: errors.append(1),
        on_state=states.append,
        clock=lambda: monotonic[0],
    )
    assert store.is_shared and states == [True]
    rl = RateLimiter(rate=1, burst=3, store=store)
    with caplog.at_level(logging.WARNING, logger="services.gateway.ratelimit"):
        for _ in range(3):
            await rl.check("k")
        with pytest.raises(RateLimited):  # the limit still holds, in this replica
            await rl.check("k")
    assert len(errors) == 1 and states == [True, False]  # one try, then memory until the retry
    status = store.status()
    assert status["mode"] == "in-process (fail-open)" and status["healthy"] is False
    assert status["store"].startswith("redis://:***@127.0.0.1:") and "hunter2" not in str(status)
    assert "ConnectionError" in status["last_error"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "hunter2" not in warnings[0].getMessage()
    monotonic[0] = 5.0  # retry time: the store is asked again (and fails again)
    await rl.check("other")
    assert len(errors) == 2 and states == [True, False]


async def test_memory_store_status_is_in_process() -> None:
    status = LimitStore().status()
    assert status == {
        "store": "memory://",
        "mode": "in-process",
        "healthy": True,
        "errors": 0,
        "last_error": None,
    }

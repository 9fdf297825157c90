"""The body deadline and rate floor against slow clients (issue 19): services.gateway.body."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.errors import PayloadTooLarge, RequestTimeout
from services.gateway.body import BodyLimits, read_body


def test_deadline_is_the_earlier_of_the_whole_body_and_the_rate_floor() -> None:
    lim = BodyLimits(timeout_s=10.0, min_bytes_per_s=1000.0, grace_s=2.0)
    assert lim.deadline(100.0, 0) == pytest.approx(102.0)  # nothing yet: due after the grace
    assert lim.deadline(100.0, 3000) == pytest.approx(105.0)  # 3 s of credit at 1000 B/s
    assert lim.deadline(100.0, 50_000) == pytest.approx(110.0)  # fast, but the whole-body bound holds
    assert BodyLimits(10.0, 0.0, 2.0).deadline(100.0, 0) == pytest.approx(110.0)  # no floor
    assert BodyLimits(0.0, 1000.0, 2.0).deadline(100.0, 500) == pytest.approx(102.5)  # no deadline
    assert BodyLimits(0.0, 0.0, 2.0).deadline(100.0, 0) is None
    assert "10 s" in lim.describe() and "1000 bytes/s" in lim.describe()


async def _trickle(parts: list[tuple[float, bytes]]):
    for pause, chunk in parts:
        await asyncio.sleep(pause)
        yield chunk


def _read(parts, limits, limit=10_000):
    return asyncio.run(read_body(_trickle(parts), limit, limits, declared="9999"))


def test_a_fast_body_is_read_whole() -> None:
    assert _read([(0, b"ab"), (0.01, b"cd")], BodyLimits(1.0, 1000.0, 0.5)) == b"abcd"
    assert _read([(0, b"ab")], None) == b"ab"


def test_a_stalled_body_gets_a_408_after_the_grace() -> None:
    t0 = time.monotonic()
    with pytest.raises(RequestTimeout) as err:
        _read([(0, b"{"), (5.0, b"}")], BodyLimits(timeout_s=3.0, min_bytes_per_s=1000.0, grace_s=0.2))
    took = time.monotonic() - t0
    assert 0.15 < took < 1.0  # cut by the rate floor at about grace + 1/1000 s, not at the deadline
    exc = err.value
    assert exc.status == 408 and exc.code == "request_timeout" and exc.type == "invalid_request_error"
    assert exc.headers == {"connection": "close"}  # the connection (and its slot) is let go
    assert "1 of 9999 bytes" in exc.message


def test_a_trickle_above_the_floor_is_cut_by_the_whole_body_deadline() -> None:
    # 100 bytes every 0.05 s = 2000 B/s, above the 1000 B/s floor: the 0.5 s deadline ends it
    t0 = time.monotonic()
    with pytest.raises(RequestTimeout):
        _read([(0.05, b"x" * 100)] * 40, BodyLimits(timeout_s=0.5, min_bytes_per_s=1000.0, grace_s=0.1))
    assert 0.45 < time.monotonic() - t0 < 1.0


def test_the_size_limit_still_answers_413() -> None:
    with pytest.raises(PayloadTooLarge):
        _read([(0, b"x" * 60), (0, b"x" * 60)], BodyLimits(), limit=100)


async def test_the_app_answers_a_slow_body_with_the_openai_408(tmp_path) -> None:
    import json

    from test_gateway_app import stack as make_stack  # its fixture, called directly

    client, *_, gw = make_stack.__wrapped__(tmp_path)
    gw.body_limits = BodyLimits(timeout_s=5.0, min_bytes_per_s=1000.0, grace_s=0.2)

    async def slow():
        yield b'{"model"'
        await asyncio.sleep(3)
        yield b"}"

    r = await client.post("/v1/chat/completions", content=slow(), headers={"content-length": "9999"})
    assert r.status_code == 408 and r.headers["connection"] == "close"
    assert json.loads(r.content)["error"]["code"] == "request_timeout"
    fast = await client.post("/v1/chat/completions", json={"model": "switchyard/auto", "messages": []})
    assert fast.status_code != 408
    await client.aclose()

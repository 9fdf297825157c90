"""The pull-based hot swap's follower (services/gateway/follow.py): a replica serves the version its
alias points at, never one that fails to load, keeps serving while MLflow is away, and does not
hammer a refused version."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.follow import AliasFollower, is_alias, mlflow_resolver


class Registry:
    """Where the alias points (a fake of MLflow's registry: pure logic under test)."""

    def __init__(self) -> None:
        self.version = "1"
        self.down = False
        self.calls = 0

    def resolve(self, ref: str) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("MLflow unreachable")
        return f"models:/r/{self.version}" if is_alias(ref) else ref


class Replica:
    """What a replica serves; versions in ``bad`` fail their load/smoke check."""

    def __init__(self, bad: set[str] = frozenset()) -> None:
        self.serving: str | None = None
        self.served: list[str] = []
        self.bad = set(bad)
        self.attempts: list[str] = []

    async def apply(self, ref: str) -> bool:
        self.attempts.append(ref)
        if ref in self.bad:
            return False
        self.serving = ref
        self.served.append(ref)
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_refs() -> None:
    assert is_alias("models:/r@champion") and not is_alias("models:/r/3")
    assert not is_alias("/some/path") and not is_alias("runs:/abc/router")
    resolve = mlflow_resolver("http://127.0.0.1:1")
    assert resolve("models:/r/3") == "models:/r/3" and resolve("/a/path") == "/a/path"  # no MLflow call


async def test_follows_the_alias_and_never_serves_a_refused_version() -> None:
    reg, rep, clock = Registry(), Replica(bad={"models:/r/2"}), Clock()
    f = AliasFollower(reg.resolve, rep.apply, clock=clock)
    assert await f.configure("models:/r@champion", poll_s=0)  # poll 0: no background task
    assert rep.serving == "models:/r/1" and f.status.pinned == "models:/r/1"
    # unchanged alias: no load at all
    assert await f.poll() and rep.attempts == ["models:/r/1"]
    # the alias moves to a version that fails its checks: the old one keeps serving
    reg.version = "2"
    assert not await f.poll()
    assert rep.serving == "models:/r/1" and f.status.failed == "models:/r/2"
    # it is not retried on every poll, only after the back-off (one poll interval, at least 1 s)
    assert not await f.poll() and rep.attempts.count("models:/r/2") == 1
    clock.t += 1.5
    assert not await f.poll() and rep.attempts.count("models:/r/2") == 2
    clock.t += 1.5  # the back-off doubled to 2 s
    assert not await f.poll() and rep.attempts.count("models:/r/2") == 2
    # a new version is tried at once and served; rollback is moving the alias back
    reg.version = "3"
    assert await f.poll() and rep.serving == "models:/r/3" and f.status.failed is None
    reg.version = "1"
    assert await f.poll() and rep.serving == "models:/r/1"
    assert rep.served == ["models:/r/1", "models:/r/3", "models:/r/1"]


async def test_mlflow_away_keeps_serving_and_reports() -> None:
    reg, rep = Registry(), Replica()
    f = AliasFollower(reg.resolve, rep.apply)
    await f.configure("models:/r@champion", poll_s=0)
    reg.down = True
    assert not await f.poll()
    assert rep.serving == "models:/r/1" and "MLflow unreachable" in f.report()["resolve_error"]
    reg.down, reg.version = False, "4"
    assert await f.poll() and rep.serving == "models:/r/4" and f.report()["resolve_error"] is None


async def test_mlflow_away_at_start_lets_the_replica_decide() -> None:
    """No version resolved yet: the replica's own path runs on the reference (its last-good cache)."""
    reg, rep = Registry(), Replica()
    reg.down = True
    f = AliasFollower(reg.resolve, rep.apply)
    assert await f.configure("models:/r@champion", poll_s=0)
    assert rep.attempts == ["models:/r@champion"]


async def test_pinned_refs_are_loaded_once() -> None:
    reg, rep = Registry(), Replica()
    f = AliasFollower(reg.resolve, rep.apply)
    assert await f.configure("/routers/a", poll_s=0.01)
    await asyncio.sleep(0.05)
    assert rep.attempts == ["/routers/a"] and f._task is None


async def test_the_background_poll_swaps_when_the_alias_moves() -> None:
    reg, rep = Registry(), Replica()
    f = AliasFollower(reg.resolve, rep.apply)
    await f.configure("models:/r@champion", poll_s=0.02)
    reg.version = "7"
    for _ in range(100):
        if rep.serving == "models:/r/7":
            break
        await asyncio.sleep(0.01)
    f.stop()
    assert rep.serving == "models:/r/7" and f.status.polls >= 2


@pytest.mark.parametrize("poll_s", [-1.0])
def test_router_config_rejects_a_negative_poll(poll_s: float) -> None:
    from pydantic import ValidationError

    from services.gateway.routing import RouterConfig

    with pytest.raises(ValidationError):
        RouterConfig(router_ref="models:/r@champion", poll_s=poll_s)

"""Replicas follow the MLflow alias they are configured with (pull-based hot swap).

The router's ``user_config`` names a reference such as ``models:/switchyard-router@champion`` and
a poll interval. Every replica (each router replica, and each ingress replica for its in-process
router) resolves the alias to a pinned version (``models:/NAME/N``) every ``poll_s`` and, when the
alias has moved, loads that version through the replica's own load → smoke check → atomic swap
path, which keeps the serving router when the new one fails. Training only moves the alias;
rollback is moving it back. Nothing reaches into Ray, and the replicas need no shared state.

A version that failed to load is not retried on every poll: the follower waits (doubling from one
poll interval up to :data:`MAX_RETRY_S`) before trying that same version again, and tries a new
one at once. While MLflow is unreachable the serving router stays and the follower reports the
error in ``/readyz``. A pinned reference (``models:/NAME/N``, ``runs:/``, a path) is loaded once
and never re-resolved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from services.router.promotion import parse_model_ref

log = logging.getLogger(__name__)

MAX_RETRY_S = 300.0


def is_alias(ref: str) -> bool:
    """``models:/NAME@ALIAS``: a reference that moves."""
    parsed = parse_model_ref(ref)
    return parsed is not None and parsed[2] is not None


def mlflow_resolver(tracking_uri: str | None = None) -> Callable[[str], str]:
    """``models:/NAME@ALIAS`` → ``models:/NAME/N`` through the MLflow registry (a blocking call);
    any other reference is returned as it is."""

    def resolve(ref: str) -> str:
        parsed = parse_model_ref(ref)
        if parsed is None or parsed[2] is None:
            return ref
        from mlflow import MlflowClient

        from services.contracts.settings import MLflowSettings

        name, _, alias = parsed
        uri = tracking_uri or MLflowSettings().tracking_uri
        mv = MlflowClient(tracking_uri=uri).get_model_version_by_alias(name, alias)
        return f"models:/{name}/{mv.version}"

    return resolve


@dataclass
class FollowStatus:
    """What a replica follows and where the alias last pointed (reported in ``/readyz``)."""

    follows: str | None = None  # the configured reference
    pinned: str | None = None  # the version it resolved to and serves
    poll_s: float = 0.0
    polls: int = 0
    resolved_at: float | None = None  # wall clock of the last successful resolve
    resolve_error: str | None = None  # the last failed resolve (MLflow away), cleared on success
    failed: str | None = None  # a pinned version that failed to load (not served)
    retry_at: float | None = None  # monotonic time when ``failed`` may be tried again


class AliasFollower:
    """Keeps one replica on the version its alias points at.

    ``resolve`` maps the reference to a pinned one (blocking: run in a thread); ``apply`` loads,
    checks and swaps in a pinned reference and says whether the replica serves it now."""

    def __init__(
        self,
        resolve: Callable[[str], str],
        apply: Callable[[str], Awaitable[bool]],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._resolve = resolve
        self._apply = apply
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._backoff = 0.0
        self.status = FollowStatus()

    async def configure(self, ref: str, poll_s: float) -> bool:
        """Follow ``ref`` (polling every ``poll_s`` seconds when it is an alias; 0: never again)
        and bring the replica onto it now; whether the replica serves it."""
        changed = ref != self.status.follows
        self.status.follows, self.status.poll_s = ref, poll_s
        if changed:
            self.status.pinned = self.status.failed = self.status.retry_at = None
        ok = await self.poll()
        if is_alias(ref) and poll_s > 0 and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="router-alias-follower")
        return ok

    async def poll(self) -> bool:
        """Resolve once and swap when the alias has moved; whether the replica serves the alias's
        version (or the last one it could resolve, when MLflow is away)."""
        ref = self.status.follows
        if ref is None:
            return False
        async with self._lock:
            self.status.polls += 1
            try:
                pinned = await asyncio.to_thread(self._resolve, ref)
            except Exception as exc:  # noqa: BLE001 - MLflow away or the alias gone: keep serving
                self.status.resolve_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("cannot resolve %s (still serving %s): %s", ref, self.status.pinned, exc)
                if self.status.pinned is None:
                    # nothing served yet: the replica's own path (its last-good cache) decides
                    return await self._apply(ref)
                return False
            self.status.resolve_error, self.status.resolved_at = None, time.time()
            if pinned == self.status.pinned:
                return True
            now = self._clock()
            if pinned == self.status.failed and self.status.retry_at and now < self.status.retry_at:
                return False
            if await self._apply(pinned):
                old, self.status.pinned = self.status.pinned, pinned
                self.status.failed, self.status.retry_at, self._backoff = None, None, 0.0
                if old is not None:
                    log.info("%s moved: %s -> %s (now serving)", ref, old, pinned)
                return True
            if pinned != self.status.failed:
                self._backoff = 0.0
            self._backoff = min(MAX_RETRY_S, max(self.status.poll_s, 1.0, 2 * self._backoff))
            self.status.failed, self.status.retry_at = pinned, now + self._backoff
            log.error(
                "%s points at %s, which this replica refuses (still serving %s; retry in %.0fs)",
                ref,
                pinned,
                self.status.pinned,
                self._backoff,
            )
            return False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(self.status.poll_s, 0.05))
            if not is_alias(self.status.follows or "") or self.status.poll_s <= 0:
                return
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - the follower must outlive any one failure
                log.exception("alias poll failed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def report(self) -> dict[str, Any]:
        s = asdict(self.status)
        s.pop("retry_at", None)
        return s

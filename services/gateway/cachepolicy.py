"""The gateway's side of the semantic cache's false-hit watch (streams/cachewatch.py).

The streams job announces, per task, what the cache must do when its false-hit rate is over the
target: a higher similarity threshold, or the task's cache off. It says so on the alerts topic
(detector ``cache_false_hits``; the action in the evidence), so on-call sees the same message the
gateway acts on. Every ingress replica reads that topic from its start (no consumer group: each
replica needs every alert, and the topic is small) and applies, per task, the strictest action of
the alerts that are firing: off beats any threshold, a higher threshold beats a lower one, and a
threshold never goes below the configured one. A resolved alert lifts its action.

Kafka away: the replica keeps the policy it has and retries (aiokafka reconnects); the cache
keeps serving under the configured thresholds until it hears otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from services.contracts.topics import ALERTS

from .semcache import SemanticCache

log = logging.getLogger(__name__)

DETECTOR = "cache_false_hits"  # streams.cachewatch.DETECTOR (the gateway does not import streams)


class CachePolicy:
    """The firing cache alerts, and the policy they add up to per task (pure logic)."""

    def __init__(self, cache: SemanticCache) -> None:
        self.cache = cache
        self.base = {t: cache.policy(t) for t in cache.config.tasks}  # configured: never loosened
        self.firing: dict[str, tuple[str, dict[str, Any]]] = {}  # alert_id -> (task, evidence)
        self.applied: dict[str, dict[str, Any]] = {}

    def observe(self, alert: dict[str, Any]) -> bool:
        """Fold in one alert (its JSON); True when a task's policy changed."""
        if alert.get("detector") != DETECTOR or not alert.get("alert_id") or not alert.get("task"):
            return False
        task = str(alert["task"])
        if alert.get("status") == "firing":
            self.firing[alert["alert_id"]] = (task, dict(alert.get("evidence") or {}))
        else:
            self.firing.pop(alert["alert_id"], None)
        return self._apply(task)

    def _apply(self, task: str) -> bool:
        actions = [ev for t, ev in self.firing.values() if t == task]
        base = self.base.get(task) or self.cache.policy(None)
        off = any(ev.get("action") == "off" for ev in actions)
        raised = [float(ev["threshold"]) for ev in actions if ev.get("action") == "threshold"]
        threshold = max([float(base.threshold or 0.0), *raised])
        policy = {"enabled": bool(base.enabled) and not off, "threshold": threshold}
        if self.applied.get(task) == policy:
            return False
        self.applied[task] = policy
        self.cache.set_policy(task, threshold=threshold, enabled=policy["enabled"])
        log.warning(
            "semantic cache policy for task %s from the false-hit watch: %s",
            task,
            "off" if not policy["enabled"] else f"threshold {threshold:.3f}",
        )
        return True


class CachePolicyFollower:
    """Reads the alerts topic in the replica's event loop and feeds :class:`CachePolicy`."""

    def __init__(self, cache: SemanticCache, bootstrap: str, topic_prefix: str = "", **client: Any) -> None:
        self.policy = CachePolicy(cache)
        self.bootstrap = bootstrap
        self.topic = topic_prefix + ALERTS.name
        self.client = client
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        while True:
            consumer = AIOKafkaConsumer(
                self.topic,
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self.client,
            )
            try:
                await consumer.start()
                self.error = None
                async for record in consumer:
                    try:
                        alert = json.loads(record.value)
                    except (TypeError, ValueError):
                        continue  # not ours to judge: the streams job dead-letters bad records
                    if isinstance(alert, dict):
                        self.policy.observe(alert)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Kafka away: keep the policy, try again
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("cache policy follower: %s; retrying in 5 s", self.error)
                await asyncio.sleep(5.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    def status(self) -> dict[str, Any]:
        return {"policies": dict(self.policy.applied), "error": self.error}

"""The false-hit watch's actions reach the gateway's cache over real Kafka: the streams job's
alert (detector cache_false_hits) on the alerts topic raises a task's threshold in the gateway's
semantic cache, a stricter one switches it off, and resolving it lifts the action. Alerts of
other detectors change nothing."""

from __future__ import annotations

import asyncio
import json

from services.contracts.topic_admin import apply_topics
from services.contracts.topics import ALERTS, topic_name
from services.gateway.cachepolicy import CachePolicyFollower
from services.gateway.semcache import CacheConfig, SemanticCache
from streams.testing import produce


def _alert(alert_id: str, status: str, evidence: dict, detector: str = "cache_false_hits") -> bytes:
    return json.dumps(
        {"alert_id": alert_id, "status": status, "task": "gsm8k", "detector": detector, "evidence": evidence}
    ).encode()


async def _until(cond, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "the gateway's cache never applied the alert"
        await asyncio.sleep(0.1)


def test_false_hit_alerts_on_kafka_change_the_gateways_cache(kafka_bootstrap, unique_prefix) -> None:
    asyncio.run(apply_topics(kafka_bootstrap, unique_prefix, specs=(ALERTS,), max_replication=1))
    topic = topic_name(ALERTS, unique_prefix)

    async def run() -> None:
        cache = SemanticCache(CacheConfig(threshold=0.95))
        follower = CachePolicyFollower(cache, kafka_bootstrap, unique_prefix)
        # an alert sent before the replica started is applied too (it reads the topic from its start)
        await produce(
            kafka_bootstrap,
            [
                (topic, b"gsm8k", _alert("q", "firing", {"action": "off"}, detector="quality")),
                (topic, b"gsm8k", _alert("a1", "firing", {"action": "threshold", "threshold": 0.975})),
            ],
        )
        await follower.start()
        try:
            await _until(lambda: cache.policy("gsm8k").threshold == 0.975)
            assert cache.policy("gsm8k").enabled  # the quality alert's evidence is not an action
            await produce(kafka_bootstrap, [(topic, b"gsm8k", _alert("a2", "firing", {"action": "off"}))])
            await _until(lambda: not cache.policy("gsm8k").enabled)
            await produce(kafka_bootstrap, [(topic, b"gsm8k", _alert("a2", "resolved", {"action": "off"}))])
            await _until(lambda: cache.policy("gsm8k").enabled)
            assert cache.policy("gsm8k").threshold == 0.975 and cache.policy("algebra").threshold == 0.95
            assert follower.status()["error"] is None
        finally:
            await follower.stop()

    asyncio.run(run())

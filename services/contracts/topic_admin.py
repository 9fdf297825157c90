"""Topic administration: create or update Kafka topics from their one definition
(:mod:`services.contracts.topics`) with the real Kafka admin API (aiokafka's admin client).

Used by ``switchyard topics apply``, the streams worker (its internal topics) and the tests."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from .topics import TOPICS, TopicSpec, topic_name

log = logging.getLogger(__name__)


@dataclass
class TopicChange:
    """What :func:`apply_topics` did to one topic."""

    topic: str
    action: str  # created | updated | unchanged
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        extra = f" ({'; '.join(self.details)})" if self.details else ""
        return f"{self.action:9s} {self.topic}{extra}"


async def apply_topics(
    bootstrap: str,
    prefix: str = "",
    specs: tuple[TopicSpec, ...] = TOPICS,
    max_replication: int | None = None,
    timeout_ms: int = 15000,
    client_options: dict[str, Any] | None = None,
) -> list[TopicChange]:
    """Make the broker's topics match ``specs``: create missing ones, align configs, grow
    partitions. Idempotent. The replication factor is capped at the number of brokers (a
    single dev broker cannot hold 3 replicas); the cap is reported, not hidden."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **(client_options or {})
    )
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = len(cluster["brokers"])
        cap = min(brokers, max_replication) if max_replication else brokers
        existing = set(await admin.list_topics())
        changes: list[TopicChange] = []
        to_create = []
        for spec in specs:
            name = topic_name(spec, prefix)
            rf = min(spec.replication, cap)
            if name not in existing:
                to_create.append(NewTopic(name, spec.partitions, rf, topic_configs=spec.configs()))
                note = [f"partitions={spec.partitions}", f"replication={rf}"]
                if rf < spec.replication:
                    note.append(f"replication capped from {spec.replication} ({brokers} broker(s))")
                changes.append(TopicChange(name, "created", note))
                continue
            changes.append(await _update(admin, spec, name))
        if to_create:
            resp = await admin.create_topics(to_create, timeout_ms=timeout_ms)
            for topic, code, *rest in getattr(resp, "topic_errors", getattr(resp, "topics", [])):
                if code not in (0, 36):  # 36 = TOPIC_ALREADY_EXISTS (a concurrent apply)
                    raise RuntimeError(f"creating topic {topic} failed with error code {code}: {rest}")
            await _wait_visible(admin, {t.name for t in to_create}, timeout_ms)
        for c in changes:
            log.debug("topic %s", c.line())
        return changes
    finally:
        await admin.close()


async def _wait_visible(admin: AIOKafkaAdminClient, names: set[str], timeout_ms: int) -> None:
    """Return once the broker's metadata lists every new topic (KRaft propagates asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
    while True:
        missing = names - set(await admin.list_topics())
        if not missing:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(
                f"topics not visible in broker metadata after {timeout_ms} ms: {sorted(missing)}"
            )
        await asyncio.sleep(0.1)


async def _update(admin: AIOKafkaAdminClient, spec: TopicSpec, name: str) -> TopicChange:
    details: list[str] = []
    meta = await admin.describe_topics([name])
    partitions = len(meta[0]["partitions"])
    if partitions < spec.partitions:
        await admin.create_partitions({name: NewPartitions(spec.partitions)})
        details.append(f"partitions {partitions}->{spec.partitions}")
    elif partitions > spec.partitions:
        details.append(f"has {partitions} partitions > defined {spec.partitions} (Kafka cannot shrink; left)")
    wanted = spec.configs()
    current = await describe_topic_configs(admin, name)
    diff = {k: v for k, v in wanted.items() if current.get(k) != v}
    if diff:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=wanted)])
        details.extend(f"{k}: {current.get(k)}->{v}" for k, v in diff.items())
    action = "updated" if any("->" in d for d in details) else "unchanged"
    return TopicChange(name, action, details)


async def describe_topic_configs(admin: AIOKafkaAdminClient, name: str) -> dict[str, str]:
    """The topic's current config values, by name."""
    resp = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    out: dict[str, str] = {}
    for r in resp:
        for resource in r.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            for entry in resource[4]:
                out[entry[0]] = entry[1]
    return out

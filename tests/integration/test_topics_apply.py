"""`switchyard topics apply` against the real broker: creates from the definition, idempotent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.contracts.topic_admin import apply_topics, describe_topic_configs
from services.contracts.topics import TOPICS, TopicSpec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def _describe(bootstrap: str, names: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        meta = await admin.describe_topics(names)
        out = {}
        for m in meta:
            out[m["topic"]] = (len(m["partitions"]), await describe_topic_configs(admin, m["topic"]))
        return out
    finally:
        await admin.close()


async def test_apply_creates_every_topic_with_its_config(kafka_bootstrap: str, unique_prefix: str) -> None:
    changes = await apply_topics(kafka_bootstrap, unique_prefix)
    assert [c.action for c in changes] == ["created"] * len(TOPICS)
    state = await _describe(kafka_bootstrap, [unique_prefix + t.name for t in TOPICS])
    for spec in TOPICS:
        partitions, cfg = state[unique_prefix + spec.name]
        assert partitions == spec.partitions
        assert cfg["retention.ms"] == str(spec.retention_ms)
        assert cfg["cleanup.policy"] == spec.cleanup_policy

    again = await apply_topics(kafka_bootstrap, unique_prefix)
    assert {c.action for c in again} == {"unchanged"}


async def test_apply_repairs_drifted_config_and_grows_partitions(
    kafka_bootstrap: str, unique_prefix: str
) -> None:
    spec = TOPICS[0]
    await apply_topics(kafka_bootstrap, unique_prefix, specs=(spec,))
    name = unique_prefix + spec.name
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, configs={"retention.ms": "1000"})]
    )
    await admin.close()
    bigger = TopicSpec(spec.name, spec.key, spec.model, partitions=spec.partitions + 2)
    (change,) = await apply_topics(kafka_bootstrap, unique_prefix, specs=(bigger,))
    assert change.action == "updated"
    assert any("retention.ms: 1000->" in d for d in change.details)
    partitions, cfg = (await _describe(kafka_bootstrap, [name]))[name]
    assert partitions == spec.partitions + 2
    assert cfg["retention.ms"] == str(spec.retention_ms)


def test_cli_apply_is_idempotent(kafka_bootstrap: str, unique_prefix: str) -> None:
    env = {**os.environ, "SWITCHYARD_KAFKA_BOOTSTRAP": kafka_bootstrap}
    cmd = [sys.executable, "-m", "switchyard.cli", "topics", "apply", "--prefix", unique_prefix]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == len(TOPICS)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("unchanged") == len(TOPICS)


def test_cli_apply_reports_an_unreachable_broker() -> None:
    env = {
        **os.environ,
        "SWITCHYARD_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "SWITCHYARD_KAFKA_REQUEST_TIMEOUT_MS": "2000",
    }
    res = subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "topics", "apply"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 1
    assert "127.0.0.1:1" in res.stderr and "Traceback" not in res.stderr

"""Data survives `make down && make up`: records and committed consumer offsets are kept."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.stack import status
from services.contracts.settings import StackSettings

pytestmark = [pytest.mark.integration, pytest.mark.restarts_stack]
ROOT = Path(__file__).resolve().parents[2]


def _make(*targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", *targets], cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


async def _produce_and_commit(bootstrap: str, topic: str, group: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    for i in range(20):
        await producer.send_and_wait(topic, f"rec-{i}".encode())
    await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    n = 0
    async with asyncio.timeout(30):
        while n < 12:
            for recs in (await consumer.getmany(timeout_ms=1000, max_records=12 - n)).values():
                n += len(recs)
    await consumer.commit({TopicPartition(topic, 0): 12})
    await consumer.stop()


async def _read_back(bootstrap: str, topic: str, group: str) -> tuple[list[str], int | None, list[str]]:
    everything = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await everything.start()
    values: list[str] = []
    async with asyncio.timeout(60):
        while len(values) < 20:
            for recs in (await everything.getmany(timeout_ms=1000)).values():
                values.extend(r.value.decode() for r in recs)
    await everything.stop()
    resumed = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await resumed.start()
    tp = TopicPartition(topic, 0)
    rest: list[str] = []
    async with asyncio.timeout(60):
        while len(rest) < 8:
            for recs in (await resumed.getmany(timeout_ms=1000)).values():
                rest.extend(r.value.decode() for r in recs)
    committed = await resumed.committed(tp)
    await resumed.stop()
    return values, committed, rest


def test_records_and_offsets_survive_restart(
    kafka_bootstrap: str, mlflow_uri: str, unique_prefix: str
) -> None:
    topic, group = f"{unique_prefix}durable", f"{unique_prefix}group"
    asyncio.run(_produce_and_commit(kafka_bootstrap, topic, group))

    down = _make("down")
    assert down.returncode == 0, down.stderr
    settings = StackSettings()
    assert not any(s.running for s in status(settings)), "make down left a process behind"

    up = _make("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert all(s.ready for s in status(settings))

    values, committed, rest = asyncio.run(_read_back(kafka_bootstrap, topic, group))
    assert values == [f"rec-{i}" for i in range(20)]
    assert committed == 12
    assert rest == [f"rec-{i}" for i in range(12, 20)]


def test_second_up_is_harmless(kafka_bootstrap: str) -> None:
    before = [s.pid for s in status(StackSettings())]
    res = _make("up")
    assert res.returncode == 0, res.stderr
    assert [s.pid for s in status(StackSettings())] == before

"""The real broker: idempotent producer (acks=all), consumer group with committed offsets."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.contracts import CallEvent, decode, prompt_hash

pytestmark = pytest.mark.integration


async def _create(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def _event(i: int) -> CallEvent:
    return CallEvent(
        request_id=f"req-{i}",
        prompt_hash=prompt_hash(f"p{i}"),
        requested_model="switchyard/auto",
        mode="route",
    )


async def test_idempotent_produce_and_group_consume(kafka_bootstrap: str, unique_prefix: str) -> None:
    topic = f"{unique_prefix}switchyard.calls.v1"
    await _create(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(50):
            ev = _event(i)
            await producer.send_and_wait(topic, ev.to_bytes(), key=ev.request_id.encode())
    finally:
        await producer.stop()

    group = f"{unique_prefix}group"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while len(seen) < 50:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    seen.extend(decode("switchyard.calls.v1", r.value).request_id for r in records)
        await consumer.commit()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(f"req-{i}" for i in range(50))
    assert sum(committed.values()) == 50
    # Same key -> same partition: per-request ordering holds.
    assert len(set(seen)) == 50


async def test_committed_offsets_resume_a_group(kafka_bootstrap: str, unique_prefix: str) -> None:
    topic = f"{unique_prefix}resume"
    await _create(kafka_bootstrap, topic, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    for i in range(10):
        await producer.send_and_wait(topic, f"{i}".encode())
    await producer.stop()
    group = f"{unique_prefix}g"
    first = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await first.start()
    tp = TopicPartition(topic, 0)
    got = []
    async with asyncio.timeout(30):
        while len(got) < 4:
            for recs in (await first.getmany(tp, timeout_ms=1000, max_records=4 - len(got))).values():
                got.extend(int(r.value) for r in recs)
    await first.commit({tp: 4})
    await first.stop()
    second = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await second.start()
    rest = []
    async with asyncio.timeout(30):
        while len(rest) < 6:
            for recs in (await second.getmany(timeout_ms=1000)).values():
                rest.extend(int(r.value) for r in recs)
    await second.stop()
    assert got == [0, 1, 2, 3]
    assert rest == [4, 5, 6, 7, 8, 9]

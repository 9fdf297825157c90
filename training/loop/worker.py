"""The retrain worker: consumes ``switchyard.retrain.v1`` (and retrains on a schedule), coalesces
the requests of a poll and runs them; Kafka offsets are committed only after the runs finished,
and unfinished runs are resumed at start and while idle."""

from __future__ import annotations

import asyncio
import logging
import time

from services.contracts import RetrainRequest
from services.contracts.events import ContractError
from services.contracts.settings import KafkaSettings
from services.contracts.topics import RETRAIN, topic_name

from .run import LoopContext, RunExecutor, resume_unfinished, run_requests
from .state import RunState

log = logging.getLogger(__name__)

RESUME_EVERY_S = 60.0


def _decode(batch: dict) -> list[RetrainRequest]:
    """The valid retrain requests of one poll (an invalid record is logged and skipped)."""
    out: list[RetrainRequest] = []
    for records in batch.values():
        for r in records:
            try:
                out.append(RetrainRequest.from_bytes(r.value))
            except ContractError as exc:
                log.warning("skipping invalid retrain request at offset %s: %s", r.offset, exc)
    return out


async def consume(
    ctx: LoopContext,
    *,
    stop: asyncio.Event | None = None,
    idle_exit_s: float | None = None,
    max_runs: int | None = None,
    executor: RunExecutor | None = None,
) -> list[RunState]:
    """The worker loop: read retrain requests, coalesce for ``coalesce_s``, run, commit offsets.
    Also retrains every ``schedule_s`` if set. Returns the runs executed (for tests/CLI)."""
    from aiokafka import AIOKafkaConsumer

    if ctx.kafka is None:
        raise ValueError("the worker needs Kafka settings")
    s = ctx.settings
    executor = executor or RunExecutor(ctx)
    stop = stop or asyncio.Event()
    topic = topic_name(RETRAIN, ctx.kafka.topic_prefix)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=ctx.kafka.bootstrap,
        group_id=ctx.kafka.topic_prefix + s.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="switchyard-train-worker",
        max_poll_interval_ms=3_600_000,
        **ctx.kafka.client_options(),
    )
    await consumer.start()
    executed: list[RunState] = []
    last_activity = last_run = last_resume = time.monotonic()
    try:
        await asyncio.to_thread(resume_unfinished, ctx, executor)
        while not stop.is_set():
            requests = _decode(await consumer.getmany(timeout_ms=1000))
            if requests and s.coalesce_s > 0:
                deadline = time.monotonic() + s.coalesce_s
                while time.monotonic() < deadline:
                    timeout_ms = int(max(1, (deadline - time.monotonic()) * 1000))
                    requests += _decode(await consumer.getmany(timeout_ms=timeout_ms))
            if not requests and s.schedule_s and time.monotonic() - last_run >= s.schedule_s:
                requests = [RetrainRequest(reason="scheduled retrain", source="schedule")]
            if requests:
                log.info("retrain requests: %s", [(r.retrain_id, r.tasks, r.reason) for r in requests])
                try:
                    runs, decisions = await asyncio.to_thread(run_requests, ctx, requests, executor)
                except Exception:  # noqa: BLE001 - run state keeps the error; resumed later
                    log.error("a run failed; it stays resumable")
                    runs, decisions = [], {}
                log.info("coalescing: %s", decisions)
                executed.extend(runs)
                await consumer.commit()
                last_activity = last_run = time.monotonic()
            elif time.monotonic() - last_resume >= RESUME_EVERY_S:
                # a run that failed (and is not yet marked failed) is retried while idle
                last_resume = time.monotonic()
                if any(not run.done for run in ctx.store().all()):
                    executed.extend(await asyncio.to_thread(resume_unfinished, ctx, executor))
            if max_runs is not None and len(executed) >= max_runs:
                break
            if idle_exit_s is not None and time.monotonic() - last_activity > idle_exit_s:
                break
    finally:
        await consumer.stop()
    return executed


async def publish_request(kafka: KafkaSettings, req: RetrainRequest) -> None:
    """Send a retrain request to ``switchyard.retrain.v1`` (operator trigger)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True, **kafka.client_options()
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic_name(RETRAIN, kafka.topic_prefix), req.to_bytes())
    finally:
        await producer.stop()

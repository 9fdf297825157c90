"""Helpers for tests, the benchmark and the demo: a worker subprocess, a webhook receiver,
a producer and a topic reader on the real broker, and fakes of the Faust consumer and the
producers that the fast paths (``streams/fastpaths``) drive, for unit tests without a broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WebhookReceiver:
    """A local HTTP server that records every JSON body POSTed to it (an on-call stand-in)."""

    bodies: list[Any] = field(default_factory=list)
    fail_first: int = 0
    url: str = ""

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(raw))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/v2/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Worker:
    """A ``switchyard stream worker`` subprocess with its own env, log file and web port."""

    def __init__(self, env: dict[str, str], log_path: Path, web_port: int) -> None:
        self.env, self.log_path, self.web_port = env, log_path, web_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready_before = 0
        self.base_url = f"http://127.0.0.1:{web_port}"

    def start(self, ready_timeout_s: float = 120.0) -> None:
        self._ready_before = (
            self.log_path.read_text(errors="replace").count("Worker]: Ready") if self.log_path.exists() else 0
        )
        log = self.log_path.open("ab")
        cli = str(Path(sys.executable).parent / "switchyard")
        self.proc = subprocess.Popen(
            [cli, "stream", "worker", "--no-create-topics"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.base_url + "/stats/", timeout=2).status_code == 200 and self._assigned():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"worker not ready after {ready_timeout_s}s; see {self.log_path}")

    def _assigned(self) -> bool:
        # Faust logs "[^Worker]: Ready" once partitions are assigned and tables recovered.
        return self.log_path.read_text(errors="replace").count("Worker]: Ready") > self._ready_before

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.base_url + "/stats/", timeout=5).json()

    def metrics(self) -> str:
        return httpx.get(self.base_url + "/metrics", timeout=5).text

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def worker_env(bootstrap: str, prefix: str, state_dir: Path, web_port: int, **streams: Any) -> dict[str, str]:
    """Environment for a worker: broker, topic prefix, its own app id/state/port, extra settings."""
    env = dict(os.environ)
    env.update(
        {
            "SWITCHYARD_KAFKA_BOOTSTRAP": bootstrap,
            "SWITCHYARD_KAFKA_TOPIC_PREFIX": prefix,
            "SWITCHYARD_STREAMS_APP_ID": f"{prefix}streams",
            "SWITCHYARD_STREAMS_STATE_DIR": str(state_dir),
            "SWITCHYARD_STREAMS_WEB_PORT": str(web_port),
        }
    )
    for key, value in streams.items():
        env[f"SWITCHYARD_STREAMS_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@contextmanager
def run_worker(env: dict[str, str], log_path: Path, web_port: int) -> Iterator[Worker]:
    """Start a worker, yield it, stop it (even on failure)."""
    w = Worker(env, log_path, web_port)
    try:
        w.start()
        yield w
    finally:
        w.stop()


async def produce(bootstrap: str, records: Sequence[tuple[str, bytes | None, bytes]]) -> None:
    """Send ``(topic, key, value)`` records in order and wait until the broker has them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futs = [await producer.send(topic, key=key, value=value) for topic, key, value in records]
        await producer.flush()
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, min_count: int = 1, timeout_s: float = 60.0, settle_s: float = 0.0
) -> list[Any]:
    """Read a topic from the beginning until ``min_count`` records came (then ``settle_s`` more)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
            if len(out) >= min_count:
                if settle_until is None:
                    settle_until = time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
        return out
    finally:
        await consumer.stop()


# -- fakes of what the fast paths use of Faust and aiokafka (unit tests, no broker) -------------
class FakeConsumer:
    """The two things ``fastdrain.deliver`` uses of Faust's consumer; ``wait_first`` as mode's does
    it (first completed wins, the rest are cancelled, exceptions propagate)."""

    def __init__(self) -> None:
        self.suspend_flow = asyncio.Event()
        self.wait_first_calls = 0

    async def wait_first(self, *aws: Any) -> list[Any]:
        self.wait_first_calls += 1
        futs = [asyncio.ensure_future(a) for a in aws]
        try:
            done, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
            for f in done:
                if f.exception() is not None:
                    f.result()
            return [f.result() for f in futs if f.done()]
        finally:
            for f in futs:
                if not f.done():
                    f.cancel()


class FakeCluster:
    """aiokafka's cluster metadata as its ``MessageAccumulator`` asks it: one broker leads all."""

    def leader_for_partition(self, tp: Any) -> int:
        return 0


def batch_records(batch: Any) -> list[tuple[bytes | None, bytes | None]]:
    """The (key, value) records appended to one of aiokafka's producer batches, in order."""
    from aiokafka.record.default_records import DefaultRecordBatch

    raw = bytes(batch._builder._builder.build())
    return [(r.key, r.value) for r in DefaultRecordBatch(raw)]


class FakeAiokafkaProducer:
    """What the outbox uses of aiokafka's producer: aiokafka's own default partitioner and
    message accumulator, and a cluster with two topics (``out``: 6 partitions, ``log``: 3)."""

    def __init__(self) -> None:
        from aiokafka.partitioner import DefaultPartitioner
        from aiokafka.producer.message_accumulator import MessageAccumulator

        self._partitioner = DefaultPartitioner()
        self._txn_manager = None
        self._request_timeout_ms = 40000
        self._message_accumulator = MessageAccumulator(FakeCluster(), 1_048_576, 0, 30)
        parts = {"out": {0, 1, 2, 3, 4, 5}, "log": {0, 1, 2}}
        self.client = SimpleNamespace(
            _wait_on_metadata=self._meta,
            cluster=SimpleNamespace(partitions_for_topic=parts.get, available_partitions_for_topic=parts.get),
        )

    async def _meta(self, topic: str) -> None:
        return None

    def batches(self) -> list[Any]:
        return [b for q in self._message_accumulator._batches.values() for b in q]

    def appended(self) -> list[tuple[str, int, bytes | None, bytes | None]]:
        """Every record in the producer's pending batches: (topic, partition, key, value)."""
        return [
            (tp.topic, tp.partition, k, v)
            for tp, q in self._message_accumulator._batches.items()
            for b in q
            for k, v in batch_records(b)
        ]


class FakeFaustProducer:
    """Faust's producer: the aiokafka one it runs, and its public ``send`` (recorded)."""

    def __init__(self, aio: Any) -> None:
        self.aio = aio
        self.sent: list[tuple[str, int | None, bytes | None, bytes | None]] = []

    def _ensure_producer(self) -> Any:
        return self.aio

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> asyncio.Future[None]:
        self.sent.append((topic, partition, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

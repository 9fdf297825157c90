"""kill -9 of an emitting process at random instants of a Kafka outage: every event whose caller
had its answer more than one group commit before the kill reaches the real broker afterwards.

The child process runs the gateway's real ``EventEmitter`` (real aiokafka producer) against a
broker address nobody listens on (the outage), emits call events at ~300/s and prints each id
with a timestamp right after ``emit`` returns: the moment the gateway would send the response.
The parent SIGKILLs it at a random instant, then starts a new emitter on the same spool directory
against the real local broker and reads the topic back.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from gateway_stack import consume_all

from services.contracts.events import CallEvent
from services.contracts.topics import CALLS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# The stated loss window: events answered within this long before a kill -9 may be lost.
LOSS_WINDOW_S = 0.1

CHILD = r"""
import asyncio, sys, time
from pathlib import Path
from services.contracts.events import CallEvent, RoutingMode
from services.contracts.topics import CALLS
from services.gateway.emitter import EmitterConfig, EventEmitter

async def main(spool: str, bootstrap: str, prefix: str) -> None:
    em = EventEmitter(EmitterConfig(bootstrap=bootstrap, spool_dir=Path(spool), topic_prefix=prefix,
                                    retry_backoff_s=0.2, max_backoff_s=0.5))
    await em.start()
    i = 0
    while True:
        rid = f"req_{i:06d}"
        em.emit(CALLS, CallEvent(request_id=rid, prompt_hash="h" * 64, requested_model="switchyard/auto",
                                 mode=RoutingMode.ROUTE), key=rid)
        sys.stdout.write(f"{rid} {time.time():.6f}\n")
        sys.stdout.flush()
        i += 1
        await asyncio.sleep(1 / 300)

asyncio.run(main(*sys.argv[1:4]))
"""


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_during_an_outage_loses_nothing_beyond_the_group_commit(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path, seed: int
) -> None:
    from services.contracts.topic_admin import apply_topics
    from services.gateway.emitter import EmitterConfig, EventEmitter

    asyncio.run(apply_topics(kafka_bootstrap, unique_prefix, specs=(CALLS,), max_replication=1))
    spool = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool), _dead_address(), unique_prefix],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        first = child.stdout.readline()  # started and emitting
        assert first.startswith("req_"), first
        time.sleep(random.Random(seed).uniform(0.3, 2.5))  # a random instant of the outage
        child.send_signal(signal.SIGKILL)
        killed_at = time.time()
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    answered = [line.split() for line in (first + rest).splitlines() if line.startswith("req_")]
    must_have = {rid for rid, t in answered if float(t) < killed_at - LOSS_WINDOW_S}
    assert len(must_have) > 50

    async def recover() -> None:  # a new gateway process on the same spool, Kafka back
        em = EventEmitter(
            EmitterConfig(bootstrap=kafka_bootstrap, spool_dir=spool, topic_prefix=unique_prefix)
        )
        await em.start()
        assert await em.flush(60), f"{em.spool.pending} events not delivered"
        await em.stop()

    asyncio.run(recover())
    values = consume_all(kafka_bootstrap, CALLS, unique_prefix, len(must_have), 60)
    got = Counter(CallEvent.from_bytes(v).request_id for v in values)
    lost = must_have - set(got)
    assert not lost, f"{len(lost)} of {len(must_have)} answered events lost, e.g. {sorted(lost)[:3]}"
    assert set(got) <= {rid for rid, _ in answered}
    assert max(got.values()) == 1  # nothing was acknowledged before the kill: no duplicates either

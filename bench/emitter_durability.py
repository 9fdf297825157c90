"""The event log's loss window: how long an emitted event waits before it is on local disk (one
write + fsync per group commit), with Kafka away so the log is the only copy.

    python bench/emitter_durability.py [--rates 50,200,1000] [--seconds 5]

Prints, per offered rate, p50/p99/max of emit → durable (what a kill -9 right after the response
could lose) and the CPU ms per event of the whole emitter (committer thread included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

from services.contracts.events import CallEvent, RoutingMode
from services.contracts.topics import CALLS
from services.gateway.emitter import EmitterConfig, EventEmitter
from services.gateway.testing import Broker, FakeProducer


async def measure(rate: float, seconds: float) -> dict:
    em = EventEmitter(
        EmitterConfig(bootstrap="unused:1", spool_dir=Path(tempfile.mkdtemp())),
        lambda: FakeProducer(Broker(up=False)),
    )
    await em.start()
    lat: list[float] = []
    n = int(rate * seconds)
    cpu0, t_start = time.process_time(), time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        before = em.spool._appended
        rid = f"r{i:07d}"
        em.emit(
            CALLS,
            CallEvent(request_id=rid, prompt_hash="h" * 64, requested_model="m", mode=RoutingMode.ROUTE),
            key=rid,
        )
        while em.spool._appended <= before:
            await asyncio.sleep(0.0002)
        lat.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(max(0.0, t_start + (i + 1) / rate - time.perf_counter()))
    cpu = time.process_time() - cpu0
    for task in em._tasks:
        task.cancel()
    lat.sort()
    return {
        "rate": rate,
        "events": n,
        "durable_ms_p50": round(lat[len(lat) // 2], 2),
        "durable_ms_p99": round(lat[int(len(lat) * 0.99)], 2),
        "durable_ms_max": round(lat[-1], 2),
        "cpu_ms_per_event": round(cpu * 1000 / n, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="50,200,1000")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    for rate in (float(r) for r in args.rates.split(",")):
        print(json.dumps(asyncio.run(measure(rate, args.seconds))))


if __name__ == "__main__":
    main()

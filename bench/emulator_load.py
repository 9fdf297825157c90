"""Bounded load test of the upstream emulator (loopback only): throughput and latency.

Starts an emulator subprocess (speed 0 unless --speed) or targets --url, then drives it from one
or more client processes with a lean keep-alive HTTP/1.1 client on raw asyncio/uvloop sockets (a
heavier client such as httpx/openai would measure itself, not the server). Each request is a real
benchmark prompt to a random catalog model; streams are read to the end (chunked SSE).

    nice -n 10 .venv/bin/python bench/emulator_load.py --duration 10 --connections 64
    nice -n 10 .venv/bin/python bench/emulator_load.py --duration 10 --connections 64 --stream
    nice -n 10 .venv/bin/python bench/emulator_load.py --duration 10 --connections 512 --speed 1

Prints a JSON result (requests/s, latency percentiles in ms, errors) and writes it with --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _requests(data_dir: Path, n: int, stream: bool, seed: int) -> list[bytes]:
    from services.catalog import load_catalog
    from training.data import load_all

    frame = load_all(data_dir).frame
    models = load_catalog().model_ids
    rng = random.Random(seed)
    out = []
    for i in rng.sample(range(len(frame)), min(n, len(frame))):
        body = {
            "model": rng.choice(models),
            "messages": [{"role": "user", "content": frame["prompt"].iat[i]}],
        }
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        raw = json.dumps(body).encode()
        out.append(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw
        )
    return out


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        start = lower.index(b"content-length:") + 15
        length = int(lower[start : lower.index(b"\r\n", start)])
        await reader.readexactly(length)
    return status


async def _connection(
    port: int, reqs: list[bytes], deadline: float, lat: list[float], errs: list[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = random.randrange(len(reqs))
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(reqs[i % len(reqs)])
            i += 1
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                errs.append(type(exc).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if status != 200:
                errs.append(f"http_{status}")
            lat.append(time.perf_counter() - t0)
    finally:
        writer.close()


def _client(port: int, reqs: list[bytes], connections: int, duration: float, queue: mp.Queue) -> None:
    import uvloop

    lat: list[float] = []
    errs: list[str] = []

    async def main() -> None:
        deadline = time.perf_counter() + duration
        await asyncio.gather(*(_connection(port, reqs, deadline, lat, errs) for _ in range(connections)))

    uvloop.run(main())
    queue.put((lat, errs))


def _cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(port: int, reqs: list[bytes], connections: int, duration: float, clients: int) -> dict:
    """Drive ``port`` for ``duration`` seconds; return throughput and latency figures."""
    import numpy as np

    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()
    per = max(1, connections // clients)
    procs = [ctx.Process(target=_client, args=(port, reqs, per, duration, queue)) for _ in range(clients)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    lat: list[float] = []
    errs: list[str] = []
    for _ in procs:
        part_lat, part_errs = queue.get(timeout=duration + 120)
        lat += part_lat
        errs += part_errs
    for p in procs:
        p.join(timeout=30)
    wall = time.perf_counter() - t0
    arr = np.asarray(lat) * 1000 if lat else np.asarray([float("nan")])
    return {
        "connections": per * clients,
        "client_processes": clients,
        "duration_s": duration,
        "wall_s": round(wall, 2),
        "requests": len(lat),
        "errors": {e: errs.count(e) for e in set(errs)},
        "requests_per_s": round(len(lat) / duration, 1),
        "latency_ms": {q: round(float(np.percentile(arr, int(q[1:]))), 2) for q in ("p50", "p90", "p99")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="Seconds of load (bounded).")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--clients", type=int, default=1, help="Client processes.")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--speed", type=float, default=0.0, help="Emulator latency factor (0: none).")
    ap.add_argument("--prompts", type=int, default=2000, help="Distinct prompts cycled through.")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--url", default=None, help="Target a running emulator (http://127.0.0.1:PORT).")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.duration > 120:
        ap.error("--duration is capped at 120 s on this shared machine")

    from infra.emulator.server import resolve_data_dir
    from infra.emulator.testing import run_emulator

    data_dir = resolve_data_dir(args.data_dir)
    reqs = _requests(data_dir, args.prompts, args.stream, seed=0)
    if args.url:
        port = int(args.url.rsplit(":", 1)[1].strip("/"))
        result = run_load(port, reqs, args.connections, args.duration, args.clients)
    else:
        with run_emulator(data_dir=data_dir, speed=args.speed) as emu:
            cpu0 = _cpu_s(emu.process.pid)
            result = run_load(emu.port, reqs, args.connections, args.duration, args.clients)
            cpu = _cpu_s(emu.process.pid) - cpu0
            result["server_counted"] = emu.stats()["total_requests"]
            # CPU the server spent per request: its capacity on one free core, whatever the contention
            per_req_us = cpu / max(1, result["requests"]) * 1e6
            result |= {
                "server_cpu_s": round(cpu, 2),
                "server_cpu_us_per_request": round(per_req_us, 1),
                "server_capacity_rps_per_core": round(1e6 / per_req_us) if per_req_us else None,
            }
    result |= {"stream": args.stream, "speed": args.speed}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

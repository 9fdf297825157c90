"""Gateway benchmark (``make bench``): added latency over the emulator, throughput, router ceiling,
and cost/quality of replayed mixed traffic versus all-strong.

Same machine, same run: the emulator (no added latency, ``speed=0``) is called directly and
through the gateway (Ray Serve, learned router on, events to Kafka when it is reachable) at each
concurrency; the difference of the percentiles is what the gateway adds. The router encoder's
own batched throughput is measured in-process on the same cores as the ceiling.

    python bench/gateway_bench.py --router .state/gateway-test/router-mlp --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
log = logging.getLogger("bench")
KEY = "sk-bench"


def pct(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1000
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "n": len(xs),
    }


async def load(
    url: str, prompts: list[dict], concurrency: int, duration_s: float, headers: dict, model: str
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``duration_s``; latencies and errors."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as c:
        stop = time.perf_counter() + duration_s

        async def worker(w: int) -> None:
            rng = random.Random(w)
            while time.perf_counter() < stop:
                p = rng.choice(prompts)
                body = (
                    {
                        "model": model,
                        "messages": [{"role": "user", "content": p["prompt"]}],
                        "switchyard": {"task": p["task"]},
                    }
                    if model == "switchyard/auto"
                    else {"model": model, "messages": [{"role": "user", "content": p["prompt"]}]}
                )
                t0 = time.perf_counter()
                try:
                    r = await c.post("/chat/completions", json=body)
                    if r.status_code != 200:
                        errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                        continue
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                lat.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    return {**pct(lat or [0.0]), "rps": len(lat) / elapsed, "errors": errors, "concurrency": concurrency}


def router_ceiling(router_ref: str, prompts: list[dict], batch: int = 32, seconds: float = 10.0) -> dict:
    """Queries/s of the router's own batched scoring, in-process, on the same cores."""
    from services.router.artifact import load_router
    from services.router.base import Query

    r = load_router(router_ref)
    qs = [Query(p["prompt"], p["task"]) for p in prompts]
    r.scores(qs[:batch])  # warm up (loads the encoder)
    n, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        chunk = [qs[(i + k) % len(qs)] for k in range(batch)]
        i += batch
        # distinct prompts per batch so no cache helps
        chunk = [Query(q.prompt + f" ({i}:{k})", q.task) for k, q in enumerate(chunk)]
        r.scores(chunk)
        n += batch
    return {"queries_per_s": n / (time.perf_counter() - t0), "batch": batch, "version": r.version}


def sample_prompts(data_dir: Path, n: int = 400) -> list[dict]:
    from training.data import load_all

    frame = load_all(data_dir).frame.sample(n=n, random_state=0)
    return [{"prompt": row.prompt, "task": row.task} for row in frame.itertuples()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", required=True, help="Router ref (path or models:/...).")
    ap.add_argument("--duration", type=float, default=15.0, help="Seconds per measurement.")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--sustained", type=float, default=30.0, help="Seconds of the sustained run (at 64).")
    ap.add_argument("--replay-count", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SWITCHYARD_DATA_DIR", ROOT.parent / "shared" / "data")),
    )
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    a.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "router": a.router}

    prompts = sample_prompts(a.data_dir)
    log.info("router ceiling ...")
    results["router_ceiling"] = router_ceiling(a.router, prompts)
    log.info("router ceiling: %s", results["router_ceiling"])

    import ray
    from gateway_stack import emulator_catalog
    from ray import serve

    from infra.emulator.testing import run_emulator
    from services.gateway.deployments import GatewayArgs
    from services.gateway.local import deploy, start_ray

    tmp = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    prefix = f"bench{int(time.time())}."
    kafka = os.environ.get("SWITCHYARD_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    try:
        from infra.topics import apply_topics
        from services.contracts.topics import CALLS, FEEDBACK

        asyncio.run(apply_topics(kafka, prefix, specs=(CALLS, FEEDBACK), max_replication=1))
        results["events"] = f"kafka {kafka}, topics prefix {prefix}"
    except Exception as exc:  # noqa: BLE001 - the bench runs without Kafka too (events spool)
        results["events"] = f"kafka unreachable ({exc}); events spooled"
    with run_emulator(data_dir=a.data_dir, speed=0.0) as emu:
        args = GatewayArgs(
            router_ref=a.router,
            catalog_path=emulator_catalog(tmp, emu.base_url, first_token_s=20.0),
            kafka_bootstrap=kafka,
            topic_prefix=prefix,
            spool_dir=tmp / "spool",
            settings={"api_keys": [KEY]},
        )
        start_ray(args.gateway_settings(), num_cpus=os.cpu_count())
        gw_url = deploy(args, host="127.0.0.1", port=free_port(), wait_ready_s=300) + "/v1"
        direct_url = emu.openai_base_url
        hdr = {"authorization": f"Bearer {KEY}"}
        rows = []
        for c in [int(x) for x in a.concurrency.split(",")]:
            asyncio.run(load(gw_url, prompts, c, 3, hdr, "switchyard/auto"))  # warm-up
            direct = asyncio.run(
                load(direct_url, prompts, c, a.duration, hdr, "mistralai/Mixtral-8x7B-Instruct-v0.1")
            )
            gateway = asyncio.run(load(gw_url, prompts, c, a.duration, hdr, "switchyard/auto"))
            added = {k: gateway[k] - direct[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
            rows.append({"concurrency": c, "direct": direct, "gateway": gateway, "added": added})
            log.info(
                "c=%d direct p50 %.1f ms, gateway p50 %.1f ms, added p50 %.1f p99 %.1f, %.1f rps, errors %s",
                c,
                direct["p50_ms"],
                gateway["p50_ms"],
                added["p50_ms"],
                added["p99_ms"],
                gateway["rps"],
                gateway["errors"],
            )
        results["latency"] = rows
        sustained = asyncio.run(load(gw_url, prompts, 64, a.sustained, hdr, "switchyard/auto"))
        results["sustained"] = sustained
        ceiling = results["router_ceiling"]["queries_per_s"]
        results["sustained"]["share_of_router_ceiling"] = sustained["rps"] / ceiling if ceiling else None
        log.info(
            "sustained: %.1f rps, errors %s (router ceiling %.1f q/s)",
            sustained["rps"],
            sustained["errors"],
            ceiling,
        )
        if a.replay_count:
            replay_out = a.out / "replay"
            cmd = [
                sys.executable,
                "-m",
                "switchyard.cli",
                "replay",
                "--base-url",
                gw_url,
                "--emulator-url",
                emu.base_url,
                "--count",
                str(a.replay_count),
                "--concurrency",
                "8",
                "--api-key",
                KEY,
                "--out",
                str(replay_out),
                "--feedback-share",
                "0",
            ]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)  # noqa: S603
            results["replay"] = {
                "returncode": res.returncode,
                "out": str(replay_out),
                "tail": res.stdout[-3000:],
            }
            if (replay_out / "summary.json").exists():
                results["replay"]["summary"] = json.loads((replay_out / "summary.json").read_text())
        serve.shutdown()
        ray.shutdown()
    path = a.out / "gateway.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({k: v for k, v in results.items() if k != "replay"}, indent=2, default=str))
    if "replay" in results:
        print(results["replay"].get("tail", ""))
    print(f"written {path}")


if __name__ == "__main__":
    main()

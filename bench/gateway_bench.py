"""Gateway benchmark (``make bench``): what the gateway adds over calling the upstream directly,
sustained throughput, the router's own ceiling, and cost/quality of replayed mixed traffic.

Same machine, same run, same prompts. For each concurrency (closed loop, ``--concurrency``)
the gateway (Ray Serve, learned router on, events to Kafka when reachable) is driven first, with
prompts never sent before (the router's embedding cache cannot help); then the emulator is
called directly with the very same (prompt, model the gateway chose) pairs, in the same order,
at the same concurrency. Added latency = gateway percentile minus direct percentile. Each
gateway answer also carries ``Server-Timing`` (router, upstream, total inside the ingress), so
the per-request overhead (client latency minus the upstream time the gateway saw) is reported
too: it does not depend on the upstream's own spread.

Upstream latency modes (``--modes``):

* ``realistic``: the emulator's per-model latency model at normal speed (time to first token
  0.2–0.6 s by tier plus decode at 40–110 tokens/s of the corpus answer), jitter off so the
  direct replay sees the same latency per (prompt, model) as the gateway did. This is the
  honest "added latency" case: the clients wait on the upstream, not on a saturated CPU.
* ``fast``: no added latency (``speed=0``): every closed-loop client is always busy, so at 16
  and 64 clients this measures saturation (queueing on the cores), not added latency.

Then ``--cached``: the realistic run at 16 clients over a small warmed prompt pool (router cache
hits), and ``--rate``: an open-loop sustained run (Poisson arrivals at that rate, realistic
upstream, distinct prompts, and the same again over cached prompts), counting errors and
router fall-backs (``x-switchyard-route-source`` ``prior`` or ``default``: no learned router
answered in time). The 1-minute load average and the CPU seconds of the gateway's
processes (Ray: proxy, replicas, controller, raylet, GCS), of the emulator and of the load
generator are recorded around every run; CPU seconds per request is the figure that does not
depend on what else shares the machine.

    python bench/gateway_bench.py --router .state/gateway-test/router-mlp --out bench/results/gateway.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
log = logging.getLogger("bench")
KEY = "sk-bench"
AUTO = "switchyard/auto"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- measurement helpers -------------------------------------------------------------------------


def pct(xs: list[float]) -> dict[str, float]:
    """p50/p95/p99 in ms of latencies given in seconds."""
    if not xs:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    a = np.asarray(xs) * 1000
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "n": len(xs),
    }


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid → (ppid, cpu seconds) of every process (from /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        out[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def _proc_name(pid: int) -> str:
    """``ray:ProxyActor``, ``ray:ServeReplica:switchyard:ChatIngress``, ``raylet``, ...: one key per
    kind of gateway process (CPU breakdown)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "gone"
    if argv0.startswith("ray::"):
        return "ray:" + argv0[5:].split(".")[0].split(" ")[0]
    return "proc:" + Path(argv0.split(" ")[0]).name


class CpuMeter:
    """CPU seconds of this process, of the emulator, and of every other descendant (Ray)."""

    def __init__(self, emulator_pid: int | None):
        self.emulator_pid = emulator_pid
        self.dead: dict[int, float] = {}

    def sample(self) -> dict[str, float]:
        table = _proc_table()
        me = os.getpid()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        out = {"gateway": 0.0, "emulator": 0.0, "loadgen": table.get(me, (0, 0.0))[1]}
        stack = list(children.get(me, []))
        while stack:
            pid = stack.pop()
            under = children.get(pid, [])
            stack.extend(under)
            if pid == self.emulator_pid:
                out["emulator"] += table[pid][1]
                # the emulator's own children (none expected) count as emulator
                for c in under:
                    stack.remove(c)
                    out["emulator"] += table.get(c, (0, 0.0))[1]
                continue
            out["gateway"] += table[pid][1]
            name = _proc_name(pid)
            out[name] = out.get(name, 0.0) + table[pid][1]
        return out


class Phase:
    """Load average and CPU seconds around one run (net of the idle rate when it is known)."""

    idle_cpu_per_s: dict[str, float] = {}

    def __init__(self, meter: CpuMeter):
        self.meter = meter

    def __enter__(self) -> Phase:
        self.cpu0, self.t0, self.load0 = self.meter.sample(), time.perf_counter(), os.getloadavg()[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        cpu1 = self.meter.sample()
        self.wall_s = time.perf_counter() - self.t0
        self.cpu_s = {k: cpu1[k] - self.cpu0.get(k, 0.0) for k in cpu1}
        self.load = {"start_1m": self.load0, "end_1m": os.getloadavg()[0]}

    def report(self, requests: int) -> dict[str, Any]:
        n = max(requests, 1)
        idle = {k: Phase.idle_cpu_per_s.get(k, 0.0) * self.wall_s for k in self.cpu_s}
        return {
            "wall_s": self.wall_s,
            "load_avg_1m": self.load,
            "cpu_s": self.cpu_s,
            "cpu_ms_per_request": {k: 1000 * v / n for k, v in self.cpu_s.items()},
            # minus what the processes burn when no request comes (Ray's controller, agents, polls)
            "cpu_ms_per_request_net": {k: 1000 * max(0.0, v - idle[k]) / n for k, v in self.cpu_s.items()},
        }


def server_timing(value: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (value or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


# -- load ------------------------------------------------------------------------------------------


class Prompts:
    """Prompts handed out once each (the router never sees one twice), or from a small pool."""

    def __init__(self, rows: list[dict], pool: int | None = None):
        self.rows = rows
        self.pool = pool
        self._it = iter(rows) if pool is None else itertools.cycle(rows[:pool])

    def take(self) -> dict | None:
        """The next prompt; ``None`` once every distinct prompt was used (the run stops early)."""
        p = next(self._it, None)
        if p is None:
            log.warning("ran out of distinct prompts; lower --duration or --rate")
        return p


def _body(model: str, p: dict, max_tokens: int | None) -> dict:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": p["prompt"]}]}
    if model == AUTO:
        body["switchyard"] = {"task": p["task"]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body


class Recorder:
    def __init__(self) -> None:
        self.lat: list[float] = []
        self.overhead: list[float] = []
        self.router: list[float] = []
        self.errors: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()
        self.pairs: list[tuple[dict, str]] = []

    async def call(self, s: aiohttp.ClientSession, url: str, body: dict, prompt: dict) -> None:
        t0 = time.perf_counter()
        try:
            async with s.post(url, json=body) as r:
                await r.read()
                dt = time.perf_counter() - t0
                if r.status != 200:
                    self.errors[str(r.status)] += 1
                    return
                route = r.headers.get("x-switchyard-route-source")
                if route is not None:
                    self.routes[route] += 1
                    st = server_timing(r.headers.get("server-timing"))
                    self.overhead.append(dt - st.get("upstream", 0.0) / 1000)
                    self.router.append(st.get("router", 0.0) / 1000)
                    self.pairs.append((prompt, r.headers.get("x-switchyard-model", "")))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
            return
        self.lat.append(dt)

    def result(self, elapsed: float, concurrency: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            **pct(self.lat),
            "rps": len(self.lat) / elapsed,
            "errors": dict(self.errors),
            "concurrency": concurrency,
        }
        if self.overhead:
            out["overhead"] = pct(self.overhead)
            out["router"] = pct(self.router)
            out["routes"] = dict(self.routes)
            unlearned = self.routes.get("default", 0) + self.routes.get("prior", 0)
            out["router_fallback_share"] = unlearned / max(1, sum(self.routes.values()))
        return out


def _session(base: str, concurrency: int) -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(limit=concurrency + 4, force_close=False)
    return aiohttp.ClientSession(
        base_url=base.rstrip("/") + "/",
        connector=conn,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def closed_loop(
    base: str, concurrency: int, duration_s: float, prompts: Prompts, max_tokens: int | None
) -> tuple[dict[str, Any], list[tuple[dict, str]]]:
    """``concurrency`` clients, each sending its next request when the last one answers."""
    rec = Recorder()
    async with _session(base, concurrency) as s:
        stop = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < stop:
                p = prompts.take()
                if p is None:
                    return
                await rec.call(s, "chat/completions", _body(AUTO, p, max_tokens), p)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return rec.result(elapsed, concurrency), rec.pairs


async def replay_direct(
    base: str, concurrency: int, pairs: list[tuple[dict, str]], max_tokens: int | None
) -> dict[str, Any]:
    """The same (prompt, model) pairs straight to the upstream, same order, same concurrency."""
    rec = Recorder()
    it = iter(pairs)
    async with _session(base, concurrency) as s:

        async def worker() -> None:
            for p, model in it:
                await rec.call(s, "chat/completions", _body(model, p, max_tokens), p)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return rec.result(elapsed, concurrency)


async def open_loop(
    base: str, rate: float, duration_s: float, prompts: Prompts, max_tokens: int | None, cap: int = 2048
) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s for ``duration_s``, whatever the answers do (up to ``cap``
    in flight). Throughput is answers per second of the offered window (the upstream's slow tail
    still answers after it: ``drain_s``); it equals the offered rate only when every request is
    answered."""
    rec = Recorder()
    rng = random.Random(0)
    sent = 0
    async with _session(base, cap) as s:
        tasks: set[asyncio.Task] = set()
        t0 = time.perf_counter()
        nxt = t0
        while nxt < t0 + duration_s:
            now = time.perf_counter()
            if nxt > now:
                await asyncio.sleep(nxt - now)
            if len(tasks) < cap:
                p = prompts.take()
                if p is None:
                    break
                t = asyncio.create_task(rec.call(s, "chat/completions", _body(AUTO, p, max_tokens), p))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                sent += 1
            else:
                rec.errors["client_cap"] += 1
            nxt += rng.expovariate(rate)
        window = time.perf_counter() - t0
        if tasks:
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    out = rec.result(window, None)  # answers per second of the offered window
    out.update(offered_rps=rate, sent=sent, sent_rps=sent / window, drain_s=elapsed - window)
    return out


# -- the router's own ceiling ------------------------------------------------------------------------


def router_ceiling(router_ref: str, prompts: list[dict], batch: int = 32, seconds: float = 10.0) -> dict:
    """Queries/s and CPU ms/query of the router's own batched scoring, in-process, distinct prompts."""
    # one intra-op thread, like the router replica (Ray gives it OMP_NUM_THREADS=1)
    import torch

    torch.set_num_threads(1)
    from services.router.artifact import load_router
    from services.router.base import Query

    r = load_router(router_ref, threads=1)
    qs = [Query(p["prompt"], p["task"]) for p in prompts]
    r.scores(qs[:batch])  # warm up (loads the encoder)
    n, i = 0, batch
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds and i + batch <= len(qs):
        r.scores(qs[i : i + batch])  # never-seen prompts: no cache hit
        i += batch
        n += batch
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "queries_per_s": n / wall,
        "cpu_ms_per_query": 1000 * cpu / max(n, 1),
        "batch": batch,
        "version": r.version,
        "torch_threads": _torch_threads(),
        "load_avg_1m": os.getloadavg()[0],
    }


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # noqa: BLE001
        return None


# -- set-up ------------------------------------------------------------------------------------------


def sample_prompts(data_dir: Path) -> list[dict]:
    """Every distinct benchmark prompt, shuffled (the bench hands each out once)."""
    from training.data import load_all

    frame = load_all(data_dir).frame.drop_duplicates("prompt").sample(frac=1.0, random_state=0)
    return [{"prompt": row.prompt, "task": row.task} for row in frame.itertuples()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_latency_config(catalog_path: Path | None) -> dict:
    """The emulator's per-tier latency profiles per model, jitter off (a direct replay of the
    same (prompt, model) then sees exactly the upstream latency the gateway saw)."""
    from infra.emulator.faults import TIER_LATENCY
    from services.catalog import load_catalog

    cat = load_catalog(catalog_path)
    latency = {}
    for m in cat.models:
        p = TIER_LATENCY.get(m.tier, TIER_LATENCY["mid"])
        latency[m.id] = {"ttft_s": p.ttft_s, "tokens_per_s": p.tokens_per_s, "jitter": 0.0}
    return {"latency": latency}


def added(gw: dict, direct: dict) -> dict[str, float]:
    return {k: gw[k] - direct[k] for k in ("p50_ms", "p95_ms", "p99_ms")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", required=True, help="Router ref (path or models:/...).")
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds per gateway measurement.")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--modes", default="realistic,fast", help="Upstream latency modes, in order.")
    ap.add_argument("--max-tokens", type=int, default=None, help="Cap answers (default: corpus length).")
    ap.add_argument("--cached", type=int, default=16, help="Clients of the cache-hit run (0 = skip).")
    ap.add_argument(
        "--rate", type=float, default=100.0, help="Offered req/s of the sustained run (0 = skip)."
    )
    ap.add_argument("--sustained", type=float, default=30.0, help="Seconds of the sustained run.")
    ap.add_argument("--replay-count", type=int, default=300)
    ap.add_argument(
        "--direct-ingress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Serve's direct ingress: the ingress replica serves HTTP itself (no proxy actor hop).",
    )
    ap.add_argument("--settings", default="{}", help="Further GatewaySettings fields, as JSON.")
    ap.add_argument("--ceiling-s", type=float, default=10.0, help="Seconds of the router ceiling (0 = skip).")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "gateway.json",
        help="Result JSON (or a directory: <dir>/gateway.json); the replay goes beside it.",
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SWITCHYARD_DATA_DIR", ROOT.parent / "shared" / "data")),
    )
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out_path = a.out if a.out.suffix == ".json" else a.out / "gateway.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "router": a.router,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("RAY_SERVE_", "SWITCHYARD_GATEWAY_"))},
        "args": {k: str(v) for k, v in vars(a).items()},
    }

    rows = sample_prompts(a.data_dir)
    cached_pool, rows = rows[:64], rows[64:]
    ceiling_rows, rows = rows[:2000], rows[2000:]
    prompts = Prompts(rows)
    if a.ceiling_s > 0:
        log.info("router ceiling ...")
        results["router_ceiling"] = router_ceiling(a.router, ceiling_rows, seconds=a.ceiling_s)
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
        from services.contracts.topic_admin import apply_topics
        from services.contracts.topics import CALLS, FEEDBACK

        asyncio.run(apply_topics(kafka, prefix, specs=(CALLS, FEEDBACK), max_replication=1))
        results["events"] = f"kafka {kafka}, topics prefix {prefix}"
    except Exception as exc:  # noqa: BLE001 - the bench runs without Kafka too (events spool)
        results["events"] = f"kafka unreachable ({exc}); events spooled"
    with run_emulator(data_dir=a.data_dir, speed=0.0, config=flat_latency_config(None)) as emu:
        meter = CpuMeter(emu.process.pid)
        args = GatewayArgs(
            router_ref=a.router,
            catalog_path=emulator_catalog(tmp, emu.base_url, first_token_s=20.0),
            kafka_bootstrap=kafka,
            topic_prefix=prefix,
            spool_dir=tmp / "spool",
            settings={"api_keys": [KEY], "direct_ingress": a.direct_ingress, **json.loads(a.settings)},
        )
        t0 = time.perf_counter()
        port = free_port()
        start_ray(args.gateway_settings(), num_cpus=os.cpu_count(), http_port=port)
        gw_url = deploy(args, host="127.0.0.1", port=port, wait_ready_s=300) + "/v1"
        results["start_s"] = time.perf_counter() - t0
        direct_url = emu.openai_base_url
        emu.set_speed(0.0)
        warm = Prompts(cached_pool, pool=len(cached_pool))
        asyncio.run(closed_loop(gw_url, 4, 5, warm, a.max_tokens))  # warm-up
        with Phase(meter) as idle:
            time.sleep(10)
        Phase.idle_cpu_per_s = {k: v / idle.wall_s for k, v in idle.cpu_s.items()}
        results["idle_cpu_per_s"] = {**Phase.idle_cpu_per_s, "load_avg_1m": idle.load}
        log.info("idle: %s", results["idle_cpu_per_s"])

        def measure(mode: str, c: int, pool: Prompts, duration: float) -> dict[str, Any]:
            with Phase(meter) as ph:
                gw, pairs = asyncio.run(closed_loop(gw_url, c, duration, pool, a.max_tokens))
            with Phase(meter) as pd:
                direct = asyncio.run(replay_direct(direct_url, c, pairs, a.max_tokens))
            row = {
                "mode": mode,
                "concurrency": c,
                "direct": {**direct, **pd.report(direct["n"])},
                "gateway": {**gw, **ph.report(gw["n"])},
                "added": added(gw, direct),
            }
            log.info(
                "%s c=%d: direct p50 %.1f, gateway p50 %.1f / p99 %.1f, added p50 %.1f p99 %.1f, "
                "overhead p50 %.1f p99 %.1f ms, %.1f rps, errors %s, fallbacks %.1f%%, load %.2f, "
                "gateway cpu %.1f ms/req (net of idle %.1f)",
                mode,
                c,
                direct["p50_ms"],
                gw["p50_ms"],
                gw["p99_ms"],
                row["added"]["p50_ms"],
                row["added"]["p99_ms"],
                gw.get("overhead", {}).get("p50_ms", float("nan")),
                gw.get("overhead", {}).get("p99_ms", float("nan")),
                gw["rps"],
                gw["errors"],
                100 * gw.get("router_fallback_share", 0.0),
                ph.load["end_1m"],
                row["gateway"]["cpu_ms_per_request"]["gateway"],
                row["gateway"]["cpu_ms_per_request_net"]["gateway"],
            )
            return row

        table = []
        for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
            emu.set_speed(1.0 if mode == "realistic" else 0.0)
            for c in [int(x) for x in a.concurrency.split(",")]:
                dur = a.duration * (2 if (mode == "realistic" and c == 1) else 1)
                table.append(measure(mode, c, prompts, dur))
        results["latency"] = table

        if a.cached:
            emu.set_speed(1.0)
            asyncio.run(closed_loop(gw_url, 4, 3, Prompts(cached_pool, pool=len(cached_pool)), a.max_tokens))
            results["cached"] = measure(
                "realistic-cached", a.cached, Prompts(cached_pool, pool=len(cached_pool)), a.duration
            )

        if a.rate > 0:
            emu.set_speed(1.0)
            results["sustained"] = {}
            # cached first: an overloaded distinct run leaves work queued in the gateway behind it
            for name, pool in (
                ("cached", Prompts(cached_pool, pool=len(cached_pool))),
                ("distinct", prompts),
            ):
                with Phase(meter) as ph:
                    s = asyncio.run(open_loop(gw_url, a.rate, a.sustained, pool, a.max_tokens))
                s.update(ph.report(s["n"]))
                ceiling = results.get("router_ceiling", {}).get("queries_per_s")
                s["share_of_router_ceiling"] = s["rps"] / ceiling if ceiling else None
                results["sustained"][name] = s
                log.info(
                    "sustained %s: offered %.0f rps, answered %.1f rps, p50 %.0f p99 %.0f ms, errors %s, "
                    "fallbacks %.1f%%, load %.2f, gateway cpu %.1f ms/req",
                    name,
                    a.rate,
                    s["rps"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["errors"],
                    100 * s.get("router_fallback_share", 0.0),
                    ph.load["end_1m"],
                    s["cpu_ms_per_request"]["gateway"],
                )

        if a.replay_count:
            emu.set_speed(0.0)
            replay_out = out_path.parent / "replay"
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
    out_path.write_text(json.dumps(results, indent=2, default=str))
    print_table(results)
    if "replay" in results:
        print(results["replay"].get("tail", ""))
    print(f"written {out_path}")


def print_table(results: dict[str, Any]) -> None:
    """The markdown table (docs/api.md) from a results dict."""
    print(
        "| upstream | clients | direct p50/p95/p99 ms | gateway p50/p95/p99 ms | added p50/p95/p99 ms "
        "| per-request overhead p50/p99 ms | gateway req/s | errors | router fall-backs | load 1m "
        "| gateway CPU ms/req (net of idle) |"
    )
    print("|---|---:|---|---|---|---|---:|---:|---:|---:|---|")
    rows = list(results.get("latency", []))
    if "cached" in results:
        rows.append(results["cached"])
    for r in rows:
        d, g, ad = r["direct"], r["gateway"], r["added"]
        o = g.get("overhead", {})
        net = g.get("cpu_ms_per_request_net", {}).get("gateway", float("nan"))
        print(
            f"| {r['mode']} | {r['concurrency']} "
            f"| {d['p50_ms']:.1f} / {d['p95_ms']:.1f} / {d['p99_ms']:.1f} "
            f"| {g['p50_ms']:.1f} / {g['p95_ms']:.1f} / {g['p99_ms']:.1f} "
            f"| {ad['p50_ms']:.1f} / {ad['p95_ms']:.1f} / {ad['p99_ms']:.1f} "
            f"| {o.get('p50_ms', float('nan')):.1f} / {o.get('p99_ms', float('nan')):.1f} "
            f"| {g['rps']:.1f} | {sum(g['errors'].values())} "
            f"| {100 * g.get('router_fallback_share', 0):.1f} % | {g['load_avg_1m']['end_1m']:.2f} "
            f"| {g['cpu_ms_per_request']['gateway']:.1f} ({net:.1f}) |"
        )
    for name, s in results.get("sustained", {}).items():
        print(
            f"sustained {name}: offered {s['offered_rps']:.0f} req/s ({s.get('sent', 0)} sent), "
            f"answered {s['rps']:.1f} req/s ({s['n']} answers), "
            f"p50/p95/p99 {s['p50_ms']:.0f} / {s['p95_ms']:.0f} / {s['p99_ms']:.0f} ms, "
            f"errors {sum(s['errors'].values())}, router fall-backs "
            f"{100 * s.get('router_fallback_share', 0):.1f} %, load {s['load_avg_1m']['end_1m']:.2f}, "
            f"gateway CPU {s['cpu_ms_per_request']['gateway']:.1f} ms/req "
            f"({s.get('cpu_ms_per_request_net', {}).get('gateway', float('nan')):.1f} net of idle)"
        )
    if "router_ceiling" in results:
        rc = results["router_ceiling"]
        print(
            f"router ceiling: {rc['queries_per_s']:.1f} q/s, {rc['cpu_ms_per_query']:.1f} CPU ms/query "
            f"(batch {rc['batch']}, load {rc['load_avg_1m']:.2f})"
        )


if __name__ == "__main__":
    main()

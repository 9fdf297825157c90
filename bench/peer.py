"""Side by side with LiteLLM (``make bench-peer``): what each gateway adds over a stub upstream,
and the highest open-loop rate each sustains, on the same pinned core, in the same run.

Gateways: ``litellm`` (LiteLLM's proxy, pinned version from ``bench/peer-requirements.txt`` in its
own venv under the state dir, created on first use; one model name pointed at the stub),
``switchyard-pass`` (``switchyard serve``, a concrete catalog model) and ``switchyard-auto``
(the same gateway, ``switchyard/auto``: the learned router picks the model). ``stub`` is the
upstream called directly: the baseline "added latency" is measured against.

* Cores: each gateway runs under ``taskset -c 0`` (Ray's processes inherit it; the results list
  every process of each gateway with its allowed CPUs and nice value); this process (the load
  generator) and the stub run on core 1.
* Prompts: distinct MMLU prompts (``routellm/mmlu/*.csv``, column ``prompt``), shuffled once,
  each sent to one gateway once; the direct stub calls replay LiteLLM's prompts (the stub ignores
  the text).
* Rounds alternate the gateways (stub, A, B, C, stub, A, B, C ...) so machine noise spreads
  over all of them. Closed loop at each concurrency: ``--rounds`` rounds of a fixed number of
  requests; added latency = gateway percentile − stub percentile at that concurrency.
* Open-loop ladder: Poisson arrivals at each rate of ``--rates``; a step passes when every
  request got a 200 and p99 < 1 s; the sustainable rate is the highest passing step (a gateway's
  ladder stops at its first failed step). For ``switchyard-auto`` the routed share (answers whose
  ``x-switchyard-route-source`` is ``router`` or ``cheap``, i.e. a learned router decided) is
  given per step, with the count per source.
* Ratios to LiteLLM from the same run: added p50 and sustainable rate.

    python bench/peer.py                 # full run (~10 min), JSON + markdown in bench/results
    python bench/peer.py --quick         # smoke check (~3 min)
    python bench/peer.py --router-ref models:/switchyard-router@champion --gateway-env KEY=VALUE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_procs import (  # noqa: E402
    KEY,
    ROOT,
    Gateway,
    ensure_litellm,
    start_litellm,
    start_stub,
    start_switchyard,
    tree_cpu_s,
)

PASS_MODEL = "gpt-4-1106-preview"
AUTO = "switchyard/auto"
P99_LIMIT_MS = 1000.0


# -- prompts ---------------------------------------------------------------------------------------


class Prompts:
    """Distinct MMLU prompts, each handed out once; ``None`` when they are used up."""

    def __init__(self, data_dir: Path, seed: int = 0):
        import pandas as pd

        rows: dict[str, str] = {}
        for f in sorted((data_dir / "routellm" / "mmlu").glob("*.csv")):
            task = f.stem.removeprefix("mmlu_")
            for p in pd.read_csv(f, usecols=["prompt"])["prompt"].dropna():
                rows.setdefault(p, task)
        self.rows = [{"prompt": p, "task": t} for p, t in rows.items()]
        random.Random(seed).shuffle(self.rows)
        self.used = 0

    def take(self, n: int | None = None) -> Any:
        if n is None:
            if self.used >= len(self.rows):
                return None
            self.used += 1
            return self.rows[self.used - 1]
        out = self.rows[self.used : self.used + n]
        self.used += len(out)
        return out


def body(model: str, p: dict) -> dict:
    b: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": p["prompt"]}],
        "max_tokens": 16,
    }
    if model == AUTO:
        b["switchyard"] = {"task": p["task"]}
    return b


# -- load ------------------------------------------------------------------------------------------


class Rec:
    """Latencies, errors and Switchyard's headers of one measurement."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.errors: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()
        self.models: Counter[str] = Counter()
        self.inside_ms: list[float] = []  # Server-Timing total: time inside Switchyard's app
        self.cost_usd: list[float] = []  # x-switchyard-cost-usd of each answer (Switchyard only)
        self.late_s: list[float] = []  # open loop: how late the generator sent each request

    async def call(self, s: aiohttp.ClientSession, url: str, b: dict) -> None:
        t0 = time.perf_counter()
        try:
            async with s.post(url, json=b) as r:
                await r.read()
                dt = time.perf_counter() - t0
                if r.status != 200:
                    self.errors[str(r.status)] += 1
                    return
                if (route := r.headers.get("x-switchyard-route-source")) is not None:
                    self.routes[route] += 1
                    self.models[r.headers.get("x-switchyard-model", "?")] += 1
                    if (cost := r.headers.get("x-switchyard-cost-usd")) is not None:
                        self.cost_usd.append(float(cost))
                    for part in r.headers.get("server-timing", "").split(","):
                        name, _, dur = part.strip().partition(";dur=")
                        if name == "total" and dur:
                            self.inside_ms.append(float(dur))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
            return
        self.lat.append(dt)

    def result(self, sent: int, wall_s: float) -> dict[str, Any]:
        a = np.asarray(self.lat) * 1000 if self.lat else np.asarray([np.nan])
        out: dict[str, Any] = {
            "sent": sent,
            "answered": len(self.lat),
            "errors": dict(self.errors),
            "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(np.max(a)),
            "rps": len(self.lat) / wall_s,
            "wall_s": wall_s,
        }
        if self.routes:
            n = sum(self.routes.values())
            out["routes"] = dict(self.routes)
            learned = self.routes.get("router", 0) + self.routes.get("cheap", 0)
            out["routed_share"] = learned / n if "passthrough" not in self.routes else None
            out["models"] = dict(self.models.most_common(5))
        if self.cost_usd:  # what the chosen models cost, per answered request (the stub's answers)
            out["cost_per_request_usd"] = float(np.mean(self.cost_usd))
        if self.inside_ms:
            out["inside_p50_ms"] = float(np.percentile(self.inside_ms, 50))
            out["inside_p99_ms"] = float(np.percentile(self.inside_ms, 99))
        if self.late_s:
            out["send_late_p99_ms"] = float(np.percentile(self.late_s, 99) * 1000)
        return out


def session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"authorization": f"Bearer {KEY}"},
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def closed_loop(url: str, model: str, prompts: list[dict], c: int) -> dict[str, Any]:
    """``c`` clients, each sending its next prompt when its last answer came."""
    rec, it = Rec(), iter(prompts)
    async with session(c + 4) as s:

        async def client() -> None:
            for p in it:
                await rec.call(s, url, body(model, p))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(c)))
        return rec.result(len(prompts), time.perf_counter() - t0)


async def open_loop(
    url: str, model: str, rate: float, seconds: float, prompts: Prompts, limit_ms: float = P99_LIMIT_MS
) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s for ``seconds`` whatever the answers do; waits for every
    answer (30 s client timeout). ``send_late_p99_ms``: how far the generator lagged its schedule."""
    rec, rng, sent = Rec(), random.Random(int(rate)), 0
    tasks: set[asyncio.Task] = set()
    async with session(4096) as s:
        t0 = time.perf_counter()
        nxt = t0
        while nxt < t0 + seconds:
            now = time.perf_counter()
            if nxt > now:
                await asyncio.sleep(nxt - now)
            rec.late_s.append(max(0.0, time.perf_counter() - nxt))
            p = prompts.take()
            if p is None:
                rec.errors["out_of_prompts"] += 1
                break
            t = asyncio.create_task(rec.call(s, url, body(model, p)))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            sent += 1
            nxt += rng.expovariate(rate)
        window = time.perf_counter() - t0
        if tasks:
            await asyncio.gather(*tasks)
    out = rec.result(sent, window)
    out.update(offered_rps=rate, drain_s=time.perf_counter() - t0 - window)
    out["passed"] = out["answered"] == sent and sent > 0 and out["p99_ms"] < limit_ms
    if out.get("routed_share") is not None:  # routed traffic: >= 95 % decided by a learned router
        out["passed"] = out["passed"] and out["routed_share"] >= 0.95
    return out


async def warm(url: str, model: str, n: int = 40) -> None:
    """A few requests with a fixed prompt (connections, lazy imports, the router's first batch)."""
    p = {"prompt": "Warm-up: what is 2 + 2?", "task": "elementary_mathematics"}
    async with session(8) as s:
        rec = Rec()
        await asyncio.gather(*(rec.call(s, url, body(model, p)) for _ in range(n)))
        if rec.errors:
            raise RuntimeError(f"warm-up of {model} at {url} failed: {dict(rec.errors)}")


# -- the run ---------------------------------------------------------------------------------------


def measured(gw: Gateway, fn, n_hint: int) -> dict[str, Any]:
    """Run one measurement and add the gateway's CPU ms per answered request."""
    cpu0 = tree_cpu_s(gw.pid) if gw.pid else 0.0
    res = asyncio.run(fn())
    if gw.pid:
        res["cpu_ms_per_answer"] = 1000 * (tree_cpu_s(gw.pid) - cpu0) / max(res["answered"], 1)
    return res


def run(a: argparse.Namespace) -> dict[str, Any]:
    os.sched_setaffinity(
        0, {int(c) for c in a.loadgen_cpus.split(",")}
    )  # children inherit this unless taskset says otherwise
    a.state_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "uname": " ".join(platform.uname()),
        "nproc": os.cpu_count(),
        "load_avg_before": os.getloadavg(),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "args": {k: str(v) for k, v in vars(a).items()},
        "versions": {"switchyard_router": a.router_ref},
    }
    prompts = Prompts(a.data_dir)
    results["prompts_available"] = len(prompts.rows)
    lite_py = ensure_litellm(a.state_dir)
    stub = start_stub(a.state_dir, a.port_base, a.loadgen_cpus, a.stub_delay_ms)
    gws: dict[str, Gateway] = {}
    want = set(a.gateways.split(","))
    try:
        targets: dict[str, tuple[Gateway, str, str]] = {
            "stub": (stub, f"{stub.url}/v1/chat/completions", PASS_MODEL)
        }
        if "litellm" in want:
            lite = gws["litellm"] = start_litellm(
                lite_py, a.state_dir, a.port_base + 10, stub.url, PASS_MODEL, a.gateway_cpus
            )
            targets["litellm"] = (lite, f"{lite.url}/v1/chat/completions", PASS_MODEL)
            results["versions"]["litellm"] = lite.version
        if want & {"switchyard-pass", "switchyard-auto"}:
            sy = gws["switchyard"] = start_switchyard(
                a.state_dir, a.port_base + 20, stub.url, a.router_ref, a.gateway_cpus, dict(a.gateway_env)
            )
            for name, model in (("switchyard-pass", PASS_MODEL), ("switchyard-auto", AUTO)):
                if name in want:
                    targets[name] = (sy, f"{sy.url}/v1/chat/completions", model)
        for _gw, url, model in targets.values():
            asyncio.run(warm(url, model))
        results["processes"] = {name: gw.processes() for name, gw in gws.items()}
        cpu_start = {name: gw.cpu_by_kind() for name, gw in gws.items()}
        time.sleep(2)

        # closed loop: rounds alternate stub, litellm, switchyard-pass, switchyard-auto
        closed: dict[str, dict[int, list[dict]]] = {n: {} for n in targets}
        for c, n in zip(a.concurrency, a.requests, strict=True):
            for r in range(a.rounds):
                lite_prompts = prompts.take(n)  # the stub replays them (it ignores the text)
                for name, (gw, url, model) in targets.items():
                    ps = lite_prompts if name in ("stub", "litellm") else prompts.take(n)
                    if len(ps) < n:
                        raise SystemExit("out of distinct prompts: lower --requests")
                    res = measured(gw, lambda u=url, m=model, p=ps, k=c: closed_loop(u, m, p, k), n)
                    res["round"] = r
                    closed[name].setdefault(c, []).append(res)
                    print(
                        f"closed c={c} round {r} {name}: p50 {res['p50_ms']:.1f} p99 {res['p99_ms']:.1f} ms, "
                        f"{res['rps']:.0f} rps, errors {res['errors']}, "
                        f"routed {res.get('routed_share', '-')}",
                        flush=True,
                    )
        results["closed_loop"] = closed

        # open-loop ladder, one step for every gateway in turn
        ladder: dict[str, list[dict]] = {n: [] for n in targets if n != "stub"}
        failed: set[str] = set()
        for rate in a.rates:
            secs = min(a.step_max_s, max(a.step_min_s, a.step_requests / rate))
            for name in ladder:
                if name in failed:
                    continue
                gw, url, model = targets[name]
                res = measured(
                    gw,
                    lambda u=url, m=model, r=rate, s=secs: open_loop(
                        u, m, r, s, prompts, P99_LIMIT_MS + a.stub_delay_ms
                    ),
                    0,
                )
                ladder[name].append(res)
                print(
                    f"open {rate:g} rps ({secs:.1f} s) {name}: answered {res['answered']}/{res['sent']} "
                    f"p50 {res['p50_ms']:.0f} p99 {res['p99_ms']:.0f} ms, "
                    f"late p99 {res.get('send_late_p99_ms', 0):.1f} ms, "
                    f"routed {res.get('routed_share', '-')}, passed {res['passed']}",
                    flush=True,
                )
                if not res["passed"]:
                    failed.add(name)
                time.sleep(a.settle_s)
        results["ladder"] = ladder
        results["prompts_used"] = prompts.used
        end = {name: gw.cpu_by_kind() for name, gw in gws.items()}
        results["cpu_s_by_process_kind"] = {
            name: {k: round(v - cpu_start[name].get(k, 0.0), 2) for k, v in end[name].items()} for name in gws
        }
    finally:
        for gw in [*gws.values(), stub]:
            gw.stop()
        results["shutdown"] = {name: gw.shutdown for name, gw in {**gws, "stub": stub}.items()}
    results["load_avg_after"] = os.getloadavg()
    results["summary"] = summarise(results)
    return results


def pooled(rows: list[dict], key: str) -> float:
    """The median over rounds of a per-round figure."""
    return float(np.median([r[key] for r in rows]))


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Added latency per gateway and concurrency, sustainable rates, ratios to LiteLLM."""
    closed = res["closed_loop"]
    out: dict[str, Any] = {"added": {}, "sustainable_rps": {}, "ratio_to_litellm": {}}
    for name, by_c in closed.items():
        if name == "stub":
            continue
        out["added"][name] = {}
        for c, rows in by_c.items():
            base = closed["stub"][c]
            out["added"][name][c] = {
                "p50_ms": pooled(rows, "p50_ms") - pooled(base, "p50_ms"),
                "p99_ms": pooled(rows, "p99_ms") - pooled(base, "p99_ms"),
                "rps": pooled(rows, "rps"),
                "errors": sum(sum(r["errors"].values()) for r in rows),
                "routed_share": (
                    float(np.mean([r["routed_share"] for r in rows]))
                    if rows[0].get("routed_share") is not None
                    else None
                ),
            }
    for name, steps in res["ladder"].items():
        ok = [s["offered_rps"] for s in steps if s["passed"]]
        out["sustainable_rps"][name] = max(ok) if ok else 0.0
    if "litellm" not in out["added"]:
        return out
    lite_add, lite_rate = out["added"]["litellm"], out["sustainable_rps"]["litellm"]
    for name in [n for n in ("switchyard-pass", "switchyard-auto") if n in out["added"]]:
        out["ratio_to_litellm"][name] = {
            **{
                f"added_p50_c{c}": (
                    v["p50_ms"] / lite_add[c]["p50_ms"] if lite_add[c]["p50_ms"] > 0 else None
                )
                for c, v in out["added"][name].items()
            },
            "sustainable_rps": out["sustainable_rps"][name] / lite_rate if lite_rate else None,
        }
    return out


def markdown(res: dict[str, Any]) -> str:
    """The tables of docs/benchmarks/peer.md from a results dict."""
    s = res["summary"]
    cs = list(next(iter(s["added"].values())).keys())
    lines = [
        "| gateway | "
        + " | ".join(f"added p50 / p99 ms, c={c}" for c in cs)
        + " | sustainable req/s (p99 < 1 s) | "
        "added p50 ÷ LiteLLM's (" + ", ".join(f"c={c}" for c in cs) + ") | sustainable ÷ LiteLLM's |",
        "|---|" + "---:|" * len(cs) + "---:|---|---:|",
    ]
    for name, by_c in s["added"].items():
        ratio = s["ratio_to_litellm"].get(name, {})
        r_add = (
            ", ".join(
                "–" if ratio.get(f"added_p50_c{c}") is None else f"{ratio[f'added_p50_c{c}']:.2f}" for c in cs
            )
            if ratio
            else "1"
        )
        r_rate = ratio.get("sustainable_rps") if ratio else 1.0
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f}" for v in by_c.values())
            + f" | {s['sustainable_rps'][name]:g} | {r_add} | {'–' if r_rate is None else f'{r_rate:.2f}'} |"
        )
    lines += ["", "| gateway | " + " | ".join(f"c={c} req/s" for c in cs) + " |", "|---|" + "---:|" * len(cs)]
    for name, by_c in res["closed_loop"].items():
        lines.append(
            f"| {name} | " + " | ".join(f"{pooled(rows, 'rps'):.0f}" for rows in by_c.values()) + " |"
        )
    rates = [st["offered_rps"] for st in max(res["ladder"].values(), key=len)]
    lines += [
        "",
        "| offered req/s | " + " | ".join(res["ladder"]) + " |",
        "|---:|" + "---|" * len(res["ladder"]),
    ]
    for i, rate in enumerate(rates):
        cells = []
        for steps in res["ladder"].values():
            if i >= len(steps):
                cells.append("(stopped)")
                continue
            st = steps[i]
            cell = f"{st['answered']}/{st['sent']}, p50 {st['p50_ms']:.0f} / p99 {st['p99_ms']:.0f} ms"
            if st.get("routed_share") is not None:
                by = ", ".join(f"{k} {v}" for k, v in sorted(st["routes"].items()))
                cell += f", learned {100 * st['routed_share']:.0f} % ({by})"
            if st.get("cost_per_request_usd") is not None:
                cell += f", ${1e6 * st['cost_per_request_usd']:.0f}/M req"
            cells.append(("**pass** " if st["passed"] else "fail ") + cell)
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    la, lb = res["load_avg_before"], res["load_avg_after"]
    lines += [
        "",
        f"Load average before {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}, "
        f"after {lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--quick", action="store_true", help="Smoke check: small counts, three short steps.")
    ap.add_argument(
        "--router-ref",
        default=None,
        help="Router for switchyard-auto (default: --router-backend's recipe, trained once here).",
    )
    ap.add_argument(
        "--router-backend",
        choices=("static", "onnx"),
        default="static",
        help="Default router: static (the cheap router, scored in the ingress) or onnx (MiniLM int8, "
        "scored in the router deployment).",
    )
    ap.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        help="KEY=VALUE for the Switchyard gateway's environment (repeatable), "
        "e.g. SWITCHYARD_GATEWAY_DIRECT_INGRESS=false.",
    )
    ap.add_argument("--concurrency", type=ints, default=[1, 16, 64])
    ap.add_argument(
        "--requests", type=ints, default=None, help="Requests per gateway per round at each concurrency."
    )
    ap.add_argument("--rounds", type=int, default=None, help="Closed-loop rounds per concurrency.")
    ap.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=None,
        help="Open-loop ladder, req/s.",
    )
    ap.add_argument(
        "--step-requests", type=float, default=None, help="A step lasts this many requests' worth of time ..."
    )
    ap.add_argument("--step-min-s", type=float, default=None, help="... but at least this ...")
    ap.add_argument("--step-max-s", type=float, default=5.0, help="... and at most this many seconds.")
    ap.add_argument(
        "--stub-delay-ms", type=float, default=0.0, help="Upstream latency of the stub (default: none)."
    )
    ap.add_argument("--settle-s", type=float, default=1.0, help="Idle seconds after each open-loop step.")
    ap.add_argument(
        "--port-base", type=int, default=28100, help="Stub on this port, LiteLLM +10, Switchyard +20."
    )
    ap.add_argument("--gateway-cpus", default="0", help="taskset CPU list of the gateways under test.")
    ap.add_argument("--loadgen-cpus", default="1", help="CPU list of the load generator and the stub.")
    ap.add_argument(
        "--gateways",
        default="litellm,switchyard-pass,switchyard-auto",
        help="Which of litellm, switchyard-pass, switchyard-auto to measure (the stub always is).",
    )
    ap.add_argument("--state-dir", type=Path, default=ROOT / ".state" / "peer")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SWITCHYARD_DATA_DIR", ROOT.parent / "shared" / "data")),
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer.json")
    a = ap.parse_args()
    q = a.quick
    if a.requests is None:
        a.requests = [30, 160, 320] if q else [100, 320, 640]
    a.rounds = a.rounds or (1 if q else 2)
    a.rates = a.rates or ([20.0, 80.0, 300.0] if q else [20.0, 40.0, 80.0, 160.0, 300.0, 600.0])
    a.step_requests = a.step_requests or (100 if q else 500)
    a.step_min_s = a.step_min_s or (1.0 if q else 2.0)
    if q:
        a.step_max_s = min(a.step_max_s, 2.0)
    if a.router_ref is None:
        from peer_procs import default_router

        a.router_ref = default_router(a.state_dir, a.router_backend)
    res = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=str))
    md = markdown(res)
    a.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"written {a.out} and {a.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

"""Budget drift under concurrency: how far past a dollar budget a fleet spends when many requests
race for its last dollars (issue 20, part 4; docs/operations.md, "Budgets and allowlists").

    flock /tmp/heavy.lock .venv/bin/python bench/budget_drift.py --out bench/results/budget_drift.json

What it runs: a real ``redis-server`` (started here on ``--port``, 16392, password-protected, and
stopped by its own PID), and ``--replicas`` (2) processes, each one gateway replica's enforcer: a
:class:`services.gateway.budgets.Budgets` over its own :class:`LimitStore` client of that redis,
exactly as an ingress replica builds it. Each replica serves ``--requests`` (400) calls on one
key's daily budget (``--budget`` dollars) with ``--concurrency`` (32) in flight (a client sends its
next call when one is answered or refused), each call: ``reserve`` (the gateway's real bound:
prompt upper bound + completion limit at the model's catalog price) → an upstream latency (50-400
ms) → settle with its actual cost. The calls replay RouterBench's recorded answers
(``SWITCHYARD_DATA_DIR``): a random row and model per call, its prompt and answer tokens at 4
characters a token, priced with the catalog. Three scenarios:

* ``max_tokens``: clients send ``max_tokens`` 512 (a longer answer is cut there, as upstreams do);
* ``default_bound``: no ``max_tokens``; the gateway sends and reserves ``BUDGET_COMPLETION_TOKENS``
  (1024);
* ``upstream_ignores_bound``: the worst case, a bound of 1 completion token that the upstream does
  not keep: nearly every call costs more than it reserved (as a fallback to a pricier model does).

Reported per scenario (over ``--trials``): the settled spend of the admitted calls (counted in whole
micro-dollars, as the store does), the overshoot past the budget in dollars and in units of the
largest single call's cost, and the budget left unused (the price of refusing while reservations
are held). The store's counter is read back and must equal the settled spend.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing as mp
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.catalog import load_catalog  # noqa: E402
from services.contracts.api import ChatCompletionRequest, SwitchyardKnobs  # noqa: E402
from services.contracts.events import RoutingMode  # noqa: E402
from services.errors import SwitchyardError  # noqa: E402
from services.gateway.auth import Caller  # noqa: E402
from services.gateway.budgets import BudgetConfig, Budgets, micro_usd  # noqa: E402
from services.gateway.ratelimit import LimitStore  # noqa: E402
from services.gateway.service import CallContext  # noqa: E402

CHARS_PER_TOKEN = 4
SCENARIOS: dict[str, dict[str, Any]] = {
    # clients send max_tokens 512; the upstream stops there
    "max_tokens": {"max_tokens": 512, "completion_tokens": 1024, "upstream_honours": True},
    # no max_tokens: the gateway sends (and reserves) BUDGET_COMPLETION_TOKENS
    "default_bound": {"max_tokens": None, "completion_tokens": 1024, "upstream_honours": True},
    # the worst case: a bound of 1 completion token that the upstream does not keep: nearly every
    # call costs more than it reserved (as one falling back to a pricier model does)
    "upstream_ignores_bound": {"max_tokens": None, "completion_tokens": 1, "upstream_honours": False},
}


def load_calls(data_dir: Path, limit: int, seed: int) -> list[dict[str, Any]]:
    """RouterBench rows as calls: prompt, model, answer tokens (every model with an answer)."""
    catalog = load_catalog()
    known = set(catalog.model_ids)
    calls = []
    for path in sorted((data_dir / "routerbench").glob("*_test.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for col, answer in row.items():
                    model = col.removesuffix("|model_response")
                    if col.endswith("|model_response") and model in known and answer:
                        calls.append({"prompt": row["prompt"], "model": model, "answer_chars": len(answer)})
    random.Random(seed).shuffle(calls)
    return calls[:limit]


def start_redis(port: int, directory: Path, password: str) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory), "--save", "",
         "--appendonly", "no", "--requirepass", password, "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return proc
        except redis.RedisError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"redis-server on port {port} did not answer")


def stop_redis(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)  # our own child, by its PID
        proc.wait(timeout=10)


def replica(args: tuple) -> list[dict[str, Any]]:
    """One replica's enforcer serving its calls with ``concurrency`` at once; each call's outcome."""
    return asyncio.run(_replica(*args))


async def _replica(
    url, password, key_id, budget, scenario, calls, concurrency, start_at, seed
) -> list[dict[str, Any]]:
    catalog = load_catalog()
    store = LimitStore(url, password=password, timeout_s=2.0)
    config = BudgetConfig.model_validate({"keys": {key_id: {"usd_per_day": budget}}})
    spec = SCENARIOS[scenario]
    budgets = Budgets(config, catalog, store, completion_tokens=spec["completion_tokens"])
    caller = Caller(key_id)
    rng = random.Random(seed)

    async def one(i: int, call: dict[str, Any]) -> dict[str, Any]:
        body = {"model": call["model"], "messages": [{"role": "user", "content": call["prompt"]}]}
        if spec["max_tokens"] is not None:
            body["max_tokens"] = spec["max_tokens"]
        req = ChatCompletionRequest.model_validate(body)
        ctx = CallContext(
            f"req_{seed}_{i}", req, SwitchyardKnobs(), caller, "default", RoutingMode.PASSTHROUGH, None
        )
        ctx.model, ctx.payload = call["model"], req.upstream_payload()
        estimate = budgets.estimate(ctx).usd
        try:
            await budgets.reserve(ctx)
        except SwitchyardError:
            return {"admitted": False, "actual_usd": 0.0, "estimate_usd": estimate}
        prompt = len(call["prompt"]) // CHARS_PER_TOKEN + 4
        completion = max(1, call["answer_chars"] // CHARS_PER_TOKEN)
        if spec["upstream_honours"]:  # what the gateway sent upstream (its bound, or the client's)
            completion = min(completion, ctx.payload.get("max_tokens") or completion)
        actual = catalog.model(call["model"]).price.cost(prompt, completion)
        await asyncio.sleep(rng.uniform(0.05, 0.4))  # the upstream call
        await budgets.settle_now(ctx.request_id, actual, prompt + completion)
        return {"admitted": True, "actual_usd": actual, "estimate_usd": estimate}

    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for item in enumerate(calls):
        queue.put_nowait(item)
    out: list[dict[str, Any]] = []

    async def client() -> None:  # one of ``concurrency`` clients, each sending its next call on an answer
        while not queue.empty():
            out.append(await one(*queue.get_nowait()))

    await store.incr("warm-up", 0, 10)  # the connection pool is up before the race starts
    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return out


def run_trial(url, password, budget, scenario, calls, replicas, concurrency, trial) -> dict[str, Any]:
    key_id = f"{list(SCENARIOS).index(scenario):06x}{trial:06x}"  # a fresh counter per trial
    per = len(calls) // replicas
    start_at = time.time() + 1.5
    jobs = [
        (
            url,
            password,
            key_id,
            budget,
            scenario,
            calls[r * per : (r + 1) * per],
            concurrency,
            start_at,
            100 * trial + r,
        )
        for r in range(replicas)
    ]
    with mp.get_context("spawn").Pool(replicas) as pool:
        results = pool.map(replica, jobs)
    outcomes = [o for rs in results for o in rs]
    admitted = [o for o in outcomes if o["admitted"]]
    spent = sum(o["actual_usd"] for o in admitted)
    counted = sum(micro_usd(o["actual_usd"]) for o in admitted)
    import redis

    day = datetime.now(UTC).strftime("%Y-%m-%d")
    stored = int(
        redis.Redis.from_url(url, password=password).get(f"switchyard:budget/key/{key_id}/usd_per_day/{day}")
        or 0
    )
    largest = max(o["actual_usd"] for o in admitted)
    over = max(0.0, counted / 1e6 - budget)
    return {
        "admitted": len(admitted),
        "refused": len(outcomes) - len(admitted),
        "spent_usd": spent,
        "counted_usd": counted / 1e6,
        "store_counter_usd": stored / 1e6,
        "store_matches": stored == counted,
        "overshoot_usd": over,
        "largest_call_usd": largest,
        "overshoot_in_largest_calls": over / largest,
        "unused_usd": max(0.0, budget - counted / 1e6),
        "under_reserved_calls": sum(1 for o in admitted if o["actual_usd"] > o["estimate_usd"] + 1e-12),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=0.05, help="the key's daily budget (USD)")
    ap.add_argument("--requests", type=int, default=400, help="calls per replica")
    ap.add_argument("--concurrency", type=int, default=32, help="calls in flight per replica")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--port", type=int, default=16392)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("SWITCHYARD_DATA_DIR", "data")))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    calls = load_calls(args.data_dir, args.requests * args.replicas * args.trials, args.seed)
    password = "bench-" + secrets.token_hex(6)
    directory = Path(tempfile.mkdtemp(prefix="budget-drift-"))
    proc = start_redis(args.port, directory, password)
    url = f"redis://127.0.0.1:{args.port}/0"
    report: dict[str, Any] = {
        "command": "bench/budget_drift.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "budget_usd": args.budget,
        "replicas": args.replicas,
        "requests_per_replica": args.requests,
        "concurrency_per_replica": args.concurrency,
        "scenarios": {},
    }
    try:
        n = args.requests * args.replicas
        for scenario in SCENARIOS:
            trials = []
            for t in range(args.trials):
                sample = calls[(t * n) % len(calls) :][:n]
                trials.append(
                    run_trial(
                        url, password, args.budget, scenario, sample, args.replicas, args.concurrency, t
                    )
                )
            report["scenarios"][scenario] = {
                "trials": trials,
                "max_overshoot_usd": max(t["overshoot_usd"] for t in trials),
                "max_overshoot_in_largest_calls": max(t["overshoot_in_largest_calls"] for t in trials),
                "mean_unused_usd": sum(t["unused_usd"] for t in trials) / len(trials),
                "store_matches": all(t["store_matches"] for t in trials),
            }
            s = report["scenarios"][scenario]
            print(
                f"{scenario:15s} overshoot max ${s['max_overshoot_usd']:.6f} "
                f"({s['max_overshoot_in_largest_calls']:.2f} × the largest call), unused mean "
                f"${s['mean_unused_usd']:.6f}, admitted {[t['admitted'] for t in trials]}, "
                f"store matches: {s['store_matches']}"
            )
    finally:
        stop_redis(proc)
        shutil.rmtree(directory, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Provider arbitrage: the cost saved by buying each model from its cheapest healthy seller.

Replays benchmark traffic (the replayer's seeded plan over $SWITCHYARD_DATA_DIR) through a
:class:`ProviderPool` against a real emulator subprocess on 127.0.0.1 (port 18190), over real
HTTP, twice with the same requests at the same times: with arbitrage (the pool picks the
cheapest healthy offer and fails over by price) and without (every model from its listed
provider, the catalog before offers existed).

- **Sellers.** The built-in catalog with every OpenAI-protocol model sold twice: by its listed
  provider at its listed price, and by ``emulator-budgetcloud`` (the emulator's
  ``/p/emulator-budgetcloud/`` prefix) at ``--open-factor`` x the listed price for open-weight
  models (hosts of open weights compete on price) and ``--closed-factor`` x for GPT (a
  reseller's markup: never the cheaper one, so arbitrage must leave it on its listed provider).
  Claude stays with its one (Anthropic-protocol) seller. Illustrative prices.
- **Traffic.** Each benchmark prompt goes to the cheapest catalog model (by listed price) that
  the benchmark graded right on it, else the strong model: what a perfect router would send, so
  the saving is measured on top of routing.
- **Phases.** healthy (first 40 % of requests), faulted (next 30 %: ``--fault-rate`` of the cheap
  provider's calls answer 503, set through the emulator's per-provider faults), recovered (the
  rest, faults cleared). Breakers, retries and fallbacks are the gateway's defaults.

    export SWITCHYARD_DATA_DIR=/work/shared/data
    flock /tmp/heavy.lock .venv/bin/python bench/arbitrage_bench.py --out /tmp/arbitrage.json

Prints the JSON summary (cost, cost saved %, failed requests, failovers, per phase and provider)
and writes it with --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.emulator.corpus import Corpus, PromptRecord  # noqa: E402
from infra.emulator.settings import EmulatorSettings  # noqa: E402
from infra.emulator.testing import EmulatorHandle, run_emulator  # noqa: E402
from infra.replay.runner import Plan  # noqa: E402
from infra.replay.scenarios import build_scenario  # noqa: E402
from services.catalog import Catalog, load_catalog  # noqa: E402
from services.contracts.settings import DataSettings  # noqa: E402
from services.errors import SwitchyardError  # noqa: E402
from services.providers.arbitrage import ArbitragePolicy  # noqa: E402
from services.providers.pool import ProviderPool  # noqa: E402

CHEAP = "emulator-budgetcloud"
PHASES = (("healthy", 0.4), ("faulted", 0.3), ("recovered", 0.3))


def bench_catalog(path: Path, emulator_base: str, open_factor: float, closed_factor: float) -> Path:
    """The built-in catalog, every provider pointed at the emulator (paths kept) and every model
    of an OpenAI-protocol provider also sold by :data:`CHEAP` at a factor of its listed price."""
    raw = yaml.safe_load((ROOT / "services" / "catalog.yaml").read_text())
    for p in raw["providers"]:
        p["base_url"] = emulator_base + urlsplit(p["base_url"]).path
    kinds = {p["name"]: p.get("kind", "openai") for p in raw["providers"]}
    for m in raw["models"]:
        if kinds[m["provider"]] != "openai":
            continue  # a model's sellers speak one protocol (the cheap seller is OpenAI-shaped)
        closed = m["id"].startswith(("gpt-", "claude-"))
        f = closed_factor if closed else open_factor
        price = {k: round(v * f, 6) for k, v in m["price"].items() if v is not None}
        m["offers"] = [{"provider": CHEAP, "price": price}]
    path.write_text(yaml.safe_dump(raw))
    load_catalog(path)
    return path


def oracle_model(record: PromptRecord, catalog: Catalog) -> str:
    """The cheapest catalog model (listed price) the benchmark graded right on ``record``."""
    right = [m for m, label in record.labels.items() if label >= 0.5 and m in catalog.model_ids]
    return min(right, key=lambda m: (catalog.blended_price(m), m)) if right else catalog.strong_model


@dataclass
class Row:
    phase: str
    model: str
    served_model: str | None
    provider: str | None
    cost_usd: float
    failover: bool  # an offer of the requested model failed or was skipped before one answered
    error: str | None = None


async def run_mode(
    emu: EmulatorHandle,
    catalog: Catalog,
    work: list[tuple[str, PromptRecord, str]],
    arbitrage: bool,
    rate: float,
    fault_rate: float,
) -> list[Row]:
    """Send ``work`` open-loop at ``rate`` requests/s through a fresh pool; faults by phase."""
    emu.reset()
    pool = ProviderPool(catalog, arbitrage=ArbitragePolicy(enabled=arbitrage))
    rows: list[Row | None] = [None] * len(work)
    started: set[str] = set()

    async def one(i: int, phase: str, record: PromptRecord, model: str) -> None:
        attempts: list = []
        payload = {"messages": [{"role": "user", "content": record.prompt}]}
        try:
            served, _ = await pool.complete(pool.fallback_order(model), payload, attempts)
            error = None
        except SwitchyardError as exc:
            served, error = None, f"{type(exc).__name__}: {exc}"[:200]
        ok = next((a for a in attempts if a.status == "ok"), None)
        failover = ok is not None and any(a.model == ok.model and a.status != "ok" for a in attempts)
        rows[i] = Row(
            phase,
            model,
            served,
            ok.provider if ok else None,
            sum(a.cost_usd for a in attempts),
            failover,
            error,
        )

    t0 = time.monotonic()
    tasks = []
    for i, (phase, record, model) in enumerate(work):
        if phase not in started:
            started.add(phase)
            if phase == "faulted":
                emu.set_faults("*", provider=CHEAP, error_rate=fault_rate, error_statuses=[503])
            elif phase == "recovered":
                emu.clear_faults(provider=CHEAP)
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, phase, record, model)))
    await asyncio.gather(*tasks)
    await pool.aclose()
    return [r for r in rows if r is not None]


def summarize(rows: list[Row], shifted: set[str]) -> dict[str, Any]:
    """Totals over all requests, per phase, and over the shifted slice (requests for a model
    with an offer cheaper than its listed one)."""

    def block(rs: list[Row]) -> dict[str, Any]:
        return {
            "requests": len(rs),
            "cost_usd": round(sum(r.cost_usd for r in rs), 6),
            "failed": sum(1 for r in rs if r.error),
            "failovers": sum(1 for r in rs if r.failover),
            "model_fallbacks": sum(1 for r in rs if r.served_model and r.served_model != r.model),
            "served_by": dict(Counter(r.provider for r in rs if r.provider)),
        }

    return {
        "all": block(rows),
        **{p: block([r for r in rows if r.phase == p]) for p, _ in PHASES},
        "shifted_slice": block([r for r in rows if r.model in shifted]),
    }


def saved(without: dict[str, Any], with_: dict[str, Any]) -> float | None:
    base = without["cost_usd"]
    return round(100 * (1 - with_["cost_usd"] / base), 2) if base else None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir) if args.data_dir else DataSettings().data_dir
    corpus = Corpus.load(data_dir, None, EmulatorSettings(cache=args.cache).corpus_cache_dir())
    plan = Plan(build_scenario("steady"), corpus, args.seed)
    records = [job.record for _, job in plan.by_count(args.requests)]
    bounds, acc = [], 0
    for name, share in PHASES:
        acc += share
        bounds.append((round(acc * len(records)), name))
    with tempfile.TemporaryDirectory(prefix="arbitrage-bench-") as tmp:
        # the emulator needs the bench catalog (its offers' prices) before it starts: the port
        # is fixed, so the catalog's base URLs are known in advance
        base = f"http://127.0.0.1:{args.port}"
        cat_path = bench_catalog(Path(tmp) / "catalog.yaml", base, args.open_factor, args.closed_factor)
        catalog = load_catalog(cat_path)
        shifted = {
            m.id
            for m in catalog.models
            if min(o.price.blended() for o in m.all_offers) < catalog.blended_price(m.id)
        }
        work = []
        for i, rec in enumerate(records):
            phase = next(name for end, name in bounds if i < end)
            work.append((phase, rec, oracle_model(rec, catalog)))
        with run_emulator(data_dir=data_dir, catalog=cat_path, port=args.port, speed=args.speed) as emu:
            results: dict[str, Any] = {}
            for mode, on in (("without_arbitrage", False), ("with_arbitrage", True)):
                t = time.perf_counter()
                rows = await run_mode(emu, catalog, work, on, args.rate, args.fault_rate)
                results[mode] = {**summarize(rows, shifted), "wall_s": round(time.perf_counter() - t, 1)}
                errors = Counter(r.error.split(":")[0] for r in rows if r.error)
                results[mode]["errors"] = dict(errors)
    without, with_ = results["without_arbitrage"], results["with_arbitrage"]
    models = Counter(m for _, _, m in work)
    return {
        "bench": "arbitrage",
        "config": {
            "requests": len(work),
            "rate_per_s": args.rate,
            "speed": args.speed,
            "seed": args.seed,
            "open_factor": args.open_factor,
            "closed_factor": args.closed_factor,
            "fault_rate": args.fault_rate,
            "phases": dict(PHASES),
            "models": dict(models.most_common()),
        },
        "without_arbitrage": without,
        "with_arbitrage": with_,
        "cost_saved_pct": {
            p: saved(without[p], with_[p]) for p in ("all", *(name for name, _ in PHASES), "shifted_slice")
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="Benchmark data (default SWITCHYARD_DATA_DIR).")
    ap.add_argument("--requests", type=int, default=2400)
    ap.add_argument("--rate", type=float, default=100.0, help="Requests started per second (open loop).")
    ap.add_argument("--speed", type=float, default=0.0, help="Emulator latency factor (0: none).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=18190)
    ap.add_argument(
        "--open-factor", type=float, default=0.5, help="Cheap seller's price / listed, open models."
    )
    ap.add_argument("--closed-factor", type=float, default=1.1, help="Its price / listed, GPT and Claude.")
    ap.add_argument(
        "--fault-rate", type=float, default=0.6, help="Share of the cheap seller's calls failing."
    )
    ap.add_argument("--no-cache", dest="cache", action="store_false", help="Do not cache the parsed corpus.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

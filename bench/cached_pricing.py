"""What cached-token pricing does to the bill: GSM8K questions behind one shared system prompt,
sent through the gateway's provider pool (its real adapters, over HTTP) to the emulator, which
reports prompt-cache reads and writes by the providers' rules (``infra/emulator/prompt_cache.py``).

Per model: the prompt tokens, how many were read from / written to the cache, the cost the pool
priced (the catalog's cached rates) and the cost at list price (every prompt token at input).

    .venv/bin/python bench/cached_pricing.py --n 200 --out bench/results/cached_pricing.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from infra.emulator.testing import run_emulator
from services.catalog import Catalog
from services.contracts.events import Attempt
from services.providers.pool import ProviderPool
from training.data import GPT4, load_gsm8k

# (label, model, mark the system prompt with cache_control)
RUNS = (
    ("gpt-4 (automatic prefix caching)", GPT4, False),
    ("gpt-3.5-turbo (automatic prefix caching)", "gpt-3.5-turbo-1106", False),
    ("claude-v2, cache_control on the system prompt", "claude-v2", True),
    ("claude-v2, no cache_control", "claude-v2", False),
)


def _system(tokens: int) -> str:
    line = "You are a careful maths tutor. Show each step, then give the final number. "
    return line * max(1, tokens * 4 // len(line))


async def _run(pool: ProviderPool, model: str, marked: bool, system: str, questions: list[str]) -> dict:
    sys_content: object = system
    if marked:
        sys_content = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    attempts: list[Attempt] = []
    for q in questions:
        payload = {"messages": [{"role": "system", "content": sys_content}, {"role": "user", "content": q}]}
        await pool.complete([model], payload, attempts)
    ok = [a for a in attempts if a.status == "ok"]
    price = pool.catalog.model(model).price
    priced = sum(a.cost_usd for a in ok)
    listed = sum(price.cost(a.prompt_tokens, a.completion_tokens) for a in ok)
    prompt = sum(a.prompt_tokens for a in ok)
    return {
        "model": model,
        "calls": len(ok),
        "prompt_tokens": prompt,
        "cached_tokens": sum(a.cached_tokens for a in ok),
        "cache_write_tokens": sum(a.cache_write_tokens for a in ok),
        "cached_share": round(sum(a.cached_tokens for a in ok) / prompt, 4) if prompt else 0.0,
        "cost_usd": round(priced, 6),
        "list_cost_usd": round(listed, 6),
        "saving": round(1 - priced / listed, 4) if listed else 0.0,
    }


async def _main(args: argparse.Namespace) -> dict:
    questions = load_gsm8k(args.data_dir).frame["prompt"].head(args.n).tolist()
    out: dict = {"n": len(questions), "system_prompt_tokens": args.system_tokens, "runs": {}}
    with run_emulator(data_dir=args.data_dir, datasets=["gsm8k"], port=args.port) as emu:
        raw = yaml.safe_load(resources.files("services").joinpath("catalog.yaml").read_text())
        for p in raw["providers"]:
            p["base_url"] = emu.base_url + urlsplit(p["base_url"]).path
        pool = ProviderPool(Catalog.model_validate(raw))
        try:
            for label, model, marked in RUNS:
                emu.reset()  # each run starts with a cold cache
                out["runs"][label] = await _run(pool, model, marked, _system(args.system_tokens), questions)
        finally:
            await pool.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("SWITCHYARD_DATA_DIR", "../shared/data"))
    )
    ap.add_argument("--n", type=int, default=200, help="GSM8K questions per model.")
    ap.add_argument("--system-tokens", type=int, default=1500, help="Size of the shared system prompt.")
    ap.add_argument("--port", type=int, default=18290)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(_main(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

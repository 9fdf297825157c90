"""The replay summary: counts, errors by type, latency percentiles, cost and share per model,
quality from ground truth, and cost/quality versus sending everything to the strongest model."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from services.catalog import Catalog

from .config import ReplayConfig, Result
from .scenarios import Scenario


def _pct(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values) * 1000
    return {
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "max": float(arr.max()),
    }


def _quality(rows: list[Result]) -> dict[str, Any]:
    """Quality of the answers and of the strong model on the same prompts (known truth only)."""
    known = [r for r in rows if r.ok and r.correct is not None and r.baseline_correct is not None]
    q = float(np.mean([r.correct for r in known])) if known else None
    qb = float(np.mean([r.baseline_correct for r in known])) if known else None
    return {
        "quality": q,
        "baseline_quality": qb,
        "graded": len(known),
        "quality_vs_baseline": (q / qb) if q is not None and qb else None,
    }


def _cost(rows: list[Result]) -> dict[str, Any]:
    ok = [r for r in rows if r.ok and r.cost_usd is not None]
    cost = float(sum(r.cost_usd for r in ok))  # type: ignore[misc]
    base = float(sum(r.baseline_cost_usd for r in ok))
    return {"cost_usd": cost, "baseline_cost_usd": base, "cost_vs_baseline": (cost / base) if base else None}


def cache_stats(rows: list[Result]) -> dict[str, Any]:
    """The semantic cache as the client saw it: hits (by near-duplicate kind), false hits (a trap
    or another question served, or an answer worse than a fresh one), and whether a trap was ever
    served. ``hit_rate`` counts every answered request; ``dup_hit_rate`` the near-duplicates."""
    ok = [r for r in rows if r.ok]
    hits = [r for r in ok if r.cache_hit]
    dups = [r for r in ok if r.variant != "fresh"]
    false = [r for r in hits if r.false_hit]
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "hits": 0, "false_hits": 0})
    for r in ok:
        k = by_kind[r.variant]
        k["requests"] += 1
        k["hits"] += int(r.cache_hit)
        k["false_hits"] += int(bool(r.cache_hit and r.false_hit))
    return {
        "requests": len(ok),
        "near_duplicates": len(dups),
        "hits": len(hits),
        "hit_rate": len(hits) / len(ok) if ok else None,
        "dup_hit_rate": sum(r.cache_hit for r in dups) / len(dups) if dups else None,
        "false_hits": len(false),
        "false_hit_rate": len(false) / len(hits) if hits else None,
        "by_kind": dict(sorted(by_kind.items())),
    }


def summarize(
    results: list[Result], elapsed_s: float, config: ReplayConfig, scenario: Scenario, catalog: Catalog
) -> dict[str, Any]:
    """The summary of a run (JSON-serialisable)."""
    ok = [r for r in results if r.ok]
    by_model = Counter(r.model for r in ok)
    cost_by_model: dict[str, float] = defaultdict(float)
    for r in ok:
        if r.cost_usd is not None:
            cost_by_model[r.model or "?"] += r.cost_usd

    def group(rows: list[Result]) -> dict[str, Any]:
        g_ok = [r for r in rows if r.ok]
        models = Counter(r.model for r in g_ok)
        return {
            "requests": len(rows),
            "ok": len(g_ok),
            "errors": len(rows) - len(g_ok),
            "share_by_model": {m: n / len(g_ok) for m, n in models.most_common()} if g_ok else {},
            **_quality(rows),
            **_cost(rows),
        }

    tasks: dict[str, list[Result]] = defaultdict(list)
    phases: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        tasks[r.task].append(r)
        phases[r.phase].append(r)
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "base_url": config.base_url,
        "model": config.model,
        "stream": config.stream,
        "concurrency": config.concurrency,
        "rate": config.rate,
        "seed": config.seed,
        "elapsed_s": elapsed_s,
        "requests": len(results),
        "ok": len(ok),
        "errors": dict(Counter(r.error for r in results if not r.ok).most_common()),
        "throughput_rps": len(results) / elapsed_s if elapsed_s else None,
        "latency_ms": _pct([r.latency_s for r in ok]),
        "ttft_ms": _pct([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tokens": {
            "prompt": sum(r.prompt_tokens for r in ok),
            "completion": sum(r.completion_tokens for r in ok),
        },
        "share_by_model": {m: n / len(ok) for m, n in by_model.most_common()} if ok else {},
        "cost_by_model_usd": dict(sorted(cost_by_model.items(), key=lambda kv: -kv[1])),
        **_cost(results),
        **_quality(results),
        "strong_model": catalog.strong_model,
        "feedback": dict(Counter(r.feedback for r in results if r.feedback)),
        "cache": cache_stats(results),
        "by_phase": {p: group(rows) for p, rows in phases.items()},
        "by_task": {t: group(rows) for t, rows in sorted(tasks.items())},
    }


def _f(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def to_markdown(s: dict[str, Any]) -> str:
    """A readable report of a summary."""
    lat, ttft = s["latency_ms"] or {}, s["ttft_ms"] or {}
    lines = [
        f"# Replay: {s['scenario']} ({s['description']})",
        "",
        f"- target `{s['base_url']}`, model `{s['model']}`, stream={s['stream']}, "
        f"concurrency={s['concurrency']}, rate={s['rate'] or 'max'}, seed={s['seed']}",
        f"- requests {s['requests']}, ok {s['ok']}, errors {sum(s['errors'].values())} "
        f"{s['errors'] or ''} in {s['elapsed_s']:.1f}s ({_f(s['throughput_rps'], '.1f')} req/s)",
        f"- latency ms p50 {_f(lat.get('p50'), '.1f')} / p90 {_f(lat.get('p90'), '.1f')} / "
        f"p95 {_f(lat.get('p95'), '.1f')} / p99 {_f(lat.get('p99'), '.1f')}"
        + (f"; TTFT p50 {_f(ttft.get('p50'), '.1f')} / p99 {_f(ttft.get('p99'), '.1f')}" if ttft else ""),
        f"- quality {_f(s['quality'])} vs all-{s['strong_model']} {_f(s['baseline_quality'])} "
        f"(ratio {_f(s['quality_vs_baseline'])}, {s['graded']} graded)",
        f"- cost ${s['cost_usd']:.6f} vs all-{s['strong_model']} ${s['baseline_cost_usd']:.6f} "
        f"(ratio {_f(s['cost_vs_baseline'])})",
        f"- feedback posted: {s['feedback'] or 'none'}",
        *(
            [
                f"- semantic cache: {c['hits']} hits of {c['requests']} ({_f(c['hit_rate'])}; "
                f"{_f(c['dup_hit_rate'])} of {c['near_duplicates']} near-duplicates), "
                f"{c['false_hits']} false hits ({_f(c['false_hit_rate'])})"
            ]
            if (c := s.get("cache")) and (c["hits"] or c["near_duplicates"])
            else []
        ),
        "",
        "| model | share | cost USD |",
        "|---|---:|---:|",
    ]
    for m, share in s["share_by_model"].items():
        lines.append(f"| {m} | {share:.3f} | {s['cost_by_model_usd'].get(m, 0.0):.6f} |")
    for title, key in (("phase", "by_phase"), ("task", "by_task")):
        lines += [
            "",
            f"| {title} | requests | errors | quality | strong quality | cost ratio |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, g in s[key].items():
            lines.append(
                f"| {name} | {g['requests']} | {g['errors']} | {_f(g['quality'])} | "
                f"{_f(g['baseline_quality'])} | {_f(g['cost_vs_baseline'])} |"
            )
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` into ``out_dir``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "summary.json", out_dir / "summary.md"
    js.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    md.write_text(to_markdown(summary), encoding="utf-8")
    return js, md

"""The demo's numbers: quality and cost of replayed rows against always calling GPT-4
(:func:`stats`), the markdown tables, the report folder (markdown, JSON, PNG plots over time) and
the summary printed at the end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .settings import DEMO_TARGET
from .traffic import Req


def stats(rows: list[Req], task: str | None = None, not_task: str | None = None) -> dict[str, Any]:
    """Quality (ground truth), cost, errors and GPT-4-baseline comparison of some rows."""
    sel = [r for r in rows if (task is None or r.task == task) and (not_task is None or r.task != not_task)]
    ok = [r for r in sel if r.ok]
    graded = [r for r in ok if r.correct is not None and r.base_correct is not None]
    q = sum(r.correct for r in graded) / len(graded) if graded else float("nan")
    bq = sum(r.base_correct for r in graded) / len(graded) if graded else float("nan")
    cost = sum(r.cost or 0.0 for r in ok)
    bcost = sum(r.base_cost for r in ok)
    cheap = sum(1 for r in ok if r.tier == "budget")
    return {
        "requests": len(sel),
        "errors": len(sel) - len(ok),
        "quality": q,
        "strong_quality": bq,
        "quality_ratio": q / bq if bq else float("nan"),
        "cost_usd": cost,
        "strong_cost_usd": bcost,
        "savings": 1 - cost / bcost if bcost else float("nan"),
        "cheap_share": cheap / len(ok) if ok else float("nan"),
    }


def fmt(s: dict[str, Any]) -> str:
    """One line of :func:`stats`."""
    return (
        f"{s['requests']} req, {s['errors']} errors, quality {s['quality']:.3f} "
        f"(GPT-4 {s['strong_quality']:.3f}), cost ${s['cost_usd']:.3f} vs ${s['strong_cost_usd']:.3f} "
        f"all-GPT-4 ({100 * s['savings']:.1f}% saved), cheap tier {100 * s['cheap_share']:.0f}%"
    )


def target_table(rows: list[Req], target: float) -> list[str]:
    """Markdown: realized quality vs the quality target per stage and dataset, and over all."""
    out = [
        "",
        f"## Realized quality vs the target ({target:.2f} of GPT-4's; ±1.5 points is the contract)",
        "",
        "| stage | dataset | requests | quality / GPT-4 | minus target | cost ratio | cheap share |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for stage in ("steady", "after"):
        sel = [r for r in rows if r.stage == stage]
        for ds in [*sorted({r.dataset for r in sel if r.dataset}), None]:
            st = stats([r for r in sel if ds is None or r.dataset == ds])
            if not st["requests"]:
                continue
            out.append(
                f"| {stage} | {ds or 'all'} | {st['requests']} | {st['quality_ratio']:.3f} | "
                f"{100 * (st['quality_ratio'] - target):+.1f} pt | {1 - st['savings']:.3f} | "
                f"{st['cheap_share']:.1%} |"
            )
    return out


def stage_table(rows: list[Req], new_task: str) -> list[str]:
    """Markdown: quality and cost per stage, the new task apart from the others, vs all-GPT-4."""
    out = [
        "",
        "## Per stage (quality and cost relative to sending everything to GPT-4)",
        "",
        "| stage | tasks | requests | errors | quality | quality / GPT-4 | cost per 1k req "
        "| cost ratio | cheap share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage in ("steady", "drift", "during retrain", "after"):
        sel = [r for r in rows if r.stage == stage]
        for label, kw in ((new_task, {"task": new_task}), ("others", {"not_task": new_task})):
            st = stats(sel, **kw)
            if not st["requests"]:
                continue
            ok = st["requests"] - st["errors"]
            out.append(
                f"| {stage} | {label} | {st['requests']} | {st['errors']} | {st['quality']:.3f} | "
                f"{st['quality_ratio']:.3f} | ${1000 * st['cost_usd'] / max(ok, 1):.2f} | "
                f"{1 - st['savings']:.3f} | {st['cheap_share']:.1%} |"
            )
    return out


def _plots(
    out: Path, rows: list[Req], events: dict[str, float], new_task: str, rb_tasks: set[str]
) -> list[str]:
    """Quality per task group, cost per request and tier share over time; the PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = rows[0].t

    def group(r: Req) -> str:
        if r.task == new_task:
            return new_task
        if r.task in ("gsm8k",):
            return "gsm8k"
        if r.task.startswith("mbpp") or r.task in rb_tasks:
            return "routerbench"
        return "mmlu (other)"

    def rolling(
        sel: list[Req], value: Callable[[Req], float | None], n: int
    ) -> tuple[list[float], list[float]]:
        """x = seconds since the first request, y = mean of ``value`` over the last ``n`` rows."""
        xs, ys, win = [], [], []
        for r in sel:
            v = value(r)
            if v is None:
                continue
            win = [*win[-(n - 1) :], v]
            if len(win) >= min(n, 10):
                xs.append(r.t - t0)
                ys.append(sum(win) / len(win))
        return xs, ys

    def finish(fig: Any, ax: Any, title: str, ylabel: str, name: str) -> None:
        ax.set_xlabel("seconds since the first request")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8, loc="lower left")
        for label, ts in events.items():
            ax.axvline(ts - t0, color="red" if "alert" in label else "green", ls="--", lw=1)
            ax.text(ts - t0, ax.get_ylim()[1], label, rotation=90, va="top", ha="right", fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    ok_rows = [r for r in rows if r.ok]
    fig, ax = plt.subplots(figsize=(9, 4))
    for g in sorted({group(r) for r in ok_rows}):
        sel = [r for r in ok_rows if group(r) == g]
        ax.plot(*rolling(sel, lambda r: r.correct, 40), label=g)
        ax.plot(*rolling(sel, lambda r: r.base_correct, 40), ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_ylim(0, 1.05)
    finish(
        fig,
        ax,
        "Quality per task (rolling 40 requests; dotted: always GPT-4)",
        "quality (ground truth)",
        "quality.png",
    )

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(*rolling(ok_rows, lambda r: (r.cost or 0.0) * 1000, 50), label="switchyard")
    ax.plot(*rolling(ok_rows, lambda r: r.base_cost * 1000, 50), ls=":", label="always GPT-4")
    ax.set_ylim(bottom=0)
    finish(fig, ax, "Cost per request (rolling 50 requests)", "USD per 1000 requests", "cost.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    for tier in ("budget", "mid", "frontier"):
        ax.plot(*rolling(ok_rows, lambda r, t=tier: float(r.tier == t), 50), label=tier)
    ax.set_ylim(0, 1.05)
    finish(fig, ax, "Share per tier (rolling 50 requests)", "share of requests", "tiers.png")
    return ["quality.png", "cost.png", "tiers.png"]


def write_report(
    out: Path,
    run_id: str,
    rows: list[Req],
    events: dict[str, float],
    summary: dict[str, Any],
    steps: dict[str, str],
    new_task: str,
    rb_tasks: set[str],
) -> Path:
    """Markdown + PNG plots over time (quality per task group, cost/request, tier share)."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = _plots(out, rows, events, new_task, rb_tasks) if rows else []
    md = [f"# Switchyard demo {run_id}", "", "## Steps", ""]
    md += [f"- {k}: **{v}**" for k, v in steps.items()]
    md += stage_table(rows, new_task)
    md += target_table(rows, DEMO_TARGET)
    tl = summary.get("timeline") or {}
    if tl:
        md += [
            "",
            "## Timeline",
            "",
            f"- drift onset -> alert: {tl.get('onset_to_alert_s')} s "
            f"({tl.get('new_task_labelled_before_alert')} labelled {new_task} answers; detector "
            f"{tl.get('alert_detector')})",
            f"- alert -> new champion serving: {tl.get('alert_to_serving_s')} s",
            f"- drift onset -> new champion serving (the whole loop): {tl.get('onset_to_serving_s')} s",
        ]
    md += ["", "## Numbers", "", "```", json.dumps(summary, indent=1, default=str), "```", ""]
    md += [f"![{p}]({p})" for p in pngs]
    (out / "summary.json").write_text(json.dumps({"steps": steps, **summary}, indent=1, default=str))
    (out / "README.md").write_text("\n".join(md) + "\n")
    if rows:
        with (out / "requests.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps(r.__dict__) + "\n")
    return out / "README.md"


def print_summary(
    steps: dict[str, str], summary: dict[str, Any], new_task: str, report: Path, log_dir: Path
) -> None:
    """The closing summary on stdout: steps, per-stage numbers, the new task, the timeline."""
    print("\n== Switchyard demo summary ==")
    for k, v in steps.items():
        print(f"  {k}: {v}")
    for key in ("steady", "drift", "after"):
        if key in summary:
            print(f"  {key:>6}: {fmt(summary[key])}")
    if "after_new_task" in summary:
        b, a_ = summary["drift_new_task"], summary["after_new_task"]
        print(
            f"  {new_task}: quality {b['quality']:.3f} = {100 * b['quality_ratio']:.1f}% of GPT-4's "
            f"(drift, old router) -> {a_['quality']:.3f} = {100 * a_['quality_ratio']:.1f}% (after); "
            f"cheap tier {100 * b['cheap_share']:.0f}% -> {100 * a_['cheap_share']:.0f}%"
        )
        o = summary["after_other_tasks"]
        print(
            f"  other tasks after: quality {100 * o['quality_ratio']:.1f}% of GPT-4's at "
            f"{100 * o['savings']:.1f}% lower cost"
        )
    if "timeline" in summary:
        tl = summary["timeline"]
        print(
            f"  timeline: drift onset -> alert {tl.get('onset_to_alert_s')}s "
            f"({tl.get('new_task_labelled_before_alert')} labelled {new_task} answers, "
            f"{tl.get('alert_detector')} detector); alert -> new champion serving "
            f"{tl.get('alert_to_serving_s')}s; onset -> serving {tl.get('onset_to_serving_s')}s"
        )
    if "after" in summary:
        a_ = summary["after"]
        print(
            f"  whole traffic after the loop: cost ratio {1 - a_['savings']:.3f} at quality "
            f"{a_['quality_ratio']:.3f} of all-GPT-4 (RouteNLP reports 0.159 at 0.971 on its own data)"
        )
    print(f"  total time {summary['total_s']}s; report {report}; logs {log_dir}")

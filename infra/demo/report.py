"""The demo's numbers: quality and cost of replayed rows against always calling GPT-4
(:func:`stats`), the markdown tables, the report folder (markdown, JSON, PNG plots over time) and
the summary printed at the end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .settings import DEMO_TARGET, DemoSettings
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


def whole_traffic(rows: list[Req], broken_task: str | None) -> dict[str, Any]:
    """The last replay's whole traffic against all-GPT-4, and what story (a)'s task weighs in it:
    the emulator keeps the cheap model wrong there, so every router must send it to GPT-4 and its
    share of the all-GPT-4 spend is a floor under the whole cost ratio. ``without_broken_task`` is
    the rest of the traffic, where routing has a choice."""
    out: dict[str, Any] = {"all": stats(rows)}
    if broken_task:
        base = sum(r.base_cost for r in rows if r.ok)
        broken = sum(r.base_cost for r in rows if r.ok and r.task == broken_task)
        out["broken_task"] = broken_task
        out["broken_task_spend_share"] = broken / base if base else float("nan")
        out["without_broken_task"] = stats(rows, not_task=broken_task)
    return out


def whole_section(whole: dict[str, Any]) -> list[str]:
    """Markdown: the whole traffic after the loop, with story (a)'s task apart."""
    if not whole.get("all"):
        return []
    rows = [("all of it", whole["all"])]
    if whole.get("without_broken_task"):
        rows.append((f"without {whole['broken_task']}", whole["without_broken_task"]))
    md = [
        "",
        "## Whole traffic after the loop",
        "",
        "| traffic | requests | cost ratio | quality / GPT-4 | cheap share |",
        "|---|---:|---:|---:|---:|",
    ]
    md += [
        f"| {name} | {st['requests']} | {1 - st['savings']:.3f} | {st['quality_ratio']:.3f} | "
        f"{100 * st['cheap_share']:.0f}% |"
        for name, st in rows
    ]
    if whole.get("broken_task"):
        md += [
            "",
            f"{whole['broken_task']} is {100 * whole['broken_task_spend_share']:.0f}% of the all-GPT-4 "
            "spend; the emulator keeps the cheap model wrong on it, so it can only go to GPT-4: that "
            "share is a floor under the whole cost ratio.",
        ]
    return md


TRAPS = ("reorder_options", "change_numbers", "negate")


def cache_summary(off: list[Req], on: list[Req]) -> dict[str, Any]:
    """Story (c): the same traffic without and with the semantic cache. Quality is over the
    requests whose right answer is recorded (a trap's is not: traps are counted apart, and any trap
    served from the cache is a false hit); savings are the cache-on run's cost against the cache-off
    run's."""
    s_off, s_on = stats(off), stats(on)
    ok = [r for r in on if r.ok]
    hits = [r for r in ok if r.cache_hit]
    dups = [r for r in ok if r.variant != "fresh"]
    kinds: dict[str, dict[str, int]] = {}
    for r in ok:
        k = kinds.setdefault(r.variant, {"requests": 0, "hits": 0, "false_hits": 0})
        k["requests"] += 1
        k["hits"] += int(r.cache_hit)
        k["false_hits"] += int(bool(r.cache_hit and r.false_hit))
    false = sum(1 for r in hits if r.false_hit)
    return {
        "off": s_off,
        "on": s_on,
        "requests": len(ok),
        "near_duplicates": len(dups),
        "hits": len(hits),
        "hit_rate": len(hits) / len(ok) if ok else float("nan"),
        "dup_hit_rate": sum(r.cache_hit for r in dups) / len(dups) if dups else float("nan"),
        "false_hits": false,
        "false_hit_rate": false / len(hits) if hits else float("nan"),
        "traps": sum(1 for r in ok if r.variant in TRAPS),
        "traps_served": sum(1 for r in hits if r.variant in TRAPS),
        "savings_vs_no_cache": (1 - s_on["cost_usd"] / s_off["cost_usd"])
        if s_off["cost_usd"]
        else float("nan"),  # noqa: E501
        "quality_vs_no_cache": s_on["quality"] / s_off["quality"] if s_off["quality"] else float("nan"),
        "by_kind": dict(sorted(kinds.items())),
    }


def cache_section(c: dict[str, Any]) -> list[str]:
    """Markdown: story (c), the semantic cache."""
    out = [
        "",
        "## Story (c): the semantic cache",
        "",
        f"The same {c['requests']} requests ({c['near_duplicates']} near-duplicates of earlier ones: "
        f"repeats, rewordings and {c['traps']} traps whose right answer changed), cache off then on.",
        "",
        f"- hits: {c['hits']} ({100 * c['hit_rate']:.1f}% of requests, {100 * c['dup_hit_rate']:.1f}% of "
        f"near-duplicates); false hits {c['false_hits']} ({100 * c['false_hit_rate']:.1f}%); traps served "
        f"from the cache: {c['traps_served']} of {c['traps']}",
        f"- cost: ${c['on']['cost_usd']:.3f} with the cache vs ${c['off']['cost_usd']:.3f} without "
        f"(**{100 * c['savings_vs_no_cache']:.1f}% saved**), quality {c['on']['quality']:.3f} vs "
        f"{c['off']['quality']:.3f} ({c['quality_vs_no_cache']:.3f} of no-cache quality)",
        "",
        "| kind | requests | hits | false hits |",
        "|---|---:|---:|---:|",
    ]
    out += [f"| {k} | {v['requests']} | {v['hits']} | {v['false_hits']} |" for k, v in c["by_kind"].items()]
    return out


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
    for stage in ("steady", "after", "after opportunity"):
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


def stage_table(rows: list[Req], story_tasks: list[str]) -> list[str]:
    """Markdown: quality and cost per stage, each story's task apart from the others, vs all-GPT-4."""
    out = [
        "",
        "## Per stage (quality and cost relative to sending everything to GPT-4)",
        "",
        "| stage | tasks | requests | errors | quality | quality / GPT-4 | cost per 1k req "
        "| cost ratio | cheap share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage in STAGES:
        sel = [r for r in rows if r.stage == stage]
        groups = [(t, [r for r in sel if r.task == t]) for t in story_tasks]
        groups.append(("others", [r for r in sel if r.task not in story_tasks]))
        for label, part in groups:
            st = stats(part)
            if not st["requests"]:
                continue
            ok = st["requests"] - st["errors"]
            out.append(
                f"| {stage} | {label} | {st['requests']} | {st['errors']} | {st['quality']:.3f} | "
                f"{st['quality_ratio']:.3f} | ${1000 * st['cost_usd'] / max(ok, 1):.2f} | "
                f"{1 - st['savings']:.3f} | {st['cheap_share']:.1%} |"
            )
    return out


STAGES = (
    "steady",
    "drift",
    "during retrain",
    "after",
    "opportunity",
    "during opportunity retrain",
    "after opportunity",
)

# story (b)'s targets (issue 16): cost ratio after one loop, quality, notice -> serving
OPPORTUNITY_COST_TARGET = 0.35
OPPORTUNITY_QUALITY_TARGET = 0.95
OPPORTUNITY_SERVING_TARGET_S = 300.0


def opportunity_targets(opp: dict[str, Any]) -> dict[str, Any]:
    """Story (b)'s realized figures against its targets."""
    after, before = opp.get("after") or {}, opp.get("before") or {}
    ex = opp.get("exploration") or {}
    task = opp.get("task")
    spend = (ex.get("spend_usd") or {}).get(task)
    cap = ex.get("cap_usd_per_task_hour")

    def row(value: Any, target: float, ok: bool | None) -> dict[str, Any]:
        return {"value": value, "target": target, "met": ok}

    cost = 1 - after["savings"] if after.get("requests") else None
    quality = after.get("quality_ratio") if after.get("requests") else None
    serving = opp.get("notice_to_serving_s")
    errors = sum((opp.get(k) or {}).get("errors", 0) for k in ("during_retrain_all",))
    return {
        "cost_ratio_before": 1 - before["savings"] if before.get("requests") else None,
        "cost_ratio_after": row(
            cost, OPPORTUNITY_COST_TARGET, cost is not None and cost <= OPPORTUNITY_COST_TARGET
        ),
        "quality_ratio_after": row(
            quality, OPPORTUNITY_QUALITY_TARGET, quality is not None and quality >= OPPORTUNITY_QUALITY_TARGET
        ),
        "notice_to_serving_s": row(
            serving,
            OPPORTUNITY_SERVING_TARGET_S,
            serving is not None and serving < OPPORTUNITY_SERVING_TARGET_S,
        ),
        "exploration_spend_usd": row(spend, cap, spend is not None and cap is not None and spend <= cap),
        "failed_requests_during_swap": row(errors, 0, errors == 0),
    }


def opportunity_section(opp: dict[str, Any]) -> list[str]:
    """Markdown: story (b), its timeline, exploration and realized vs target."""
    task = opp.get("task")
    t = opp.get("targets") or {}
    ex = opp.get("exploration") or {}
    notice = opp.get("notice") or {}

    def f(v: Any, spec: str = ".3f") -> str:
        return "n/a" if v is None else format(v, spec)

    out = [
        "",
        f"## Story (b): savings opportunity on {task}",
        "",
        f"- notice: {notice.get('summary', 'none')} (why: {(notice.get('evidence') or {}).get('why')})",
        f"- task appears -> notice: {opp.get('onset_to_notice_s')} s ({opp.get('requests_before_notice')} "
        f"requests of all tasks); notice -> new champion serving: {opp.get('notice_to_serving_s')} s; "
        f"router {opp.get('router_before')} -> {opp.get('router_after')}",
        f"- drift alerts on {task}: {len(opp.get('drift_alerts_on_task') or [])} "
        "(none expected: quality holds)",
        f"- exploration (gateway /metrics): {f((ex.get('calls') or {}).get(task), '.0f')} shadow calls on "
        f"{task}, ${f((ex.get('spend_usd') or {}).get(task), '.3f')} spent (cap "
        f"${f(ex.get('cap_usd_per_task_hour'), '.2f')} per task per hour); all tasks: "
        f"{f(sum((ex.get('calls') or {}).values()), '.0f')} calls, "
        f"${f(sum((ex.get('spend_usd') or {}).values()), '.3f')}",
        "",
        "| figure | realized | target | met |",
        "|---|---:|---:|---|",
    ]
    cap = f(ex.get("cap_usd_per_task_hour"), ".2f")
    for key, label, target, spec in (
        (
            "cost_ratio_after",
            f"cost ratio of {task} (before: {f(t.get('cost_ratio_before'))})",
            f"<= {OPPORTUNITY_COST_TARGET}",
            ".3f",
        ),
        ("quality_ratio_after", f"quality of {task} / GPT-4's", f">= {OPPORTUNITY_QUALITY_TARGET}", ".3f"),
        (
            "notice_to_serving_s",
            "notice -> new champion serving (s)",
            f"< {OPPORTUNITY_SERVING_TARGET_S:.0f}",
            ".1f",
        ),
        ("exploration_spend_usd", f"exploration spend on {task} (USD)", f"<= {cap}", ".3f"),
        ("failed_requests_during_swap", "failed requests during the swap", "0", ".0f"),
    ):
        r = t.get(key) or {}
        out.append(f"| {label} | {f(r.get('value'), spec)} | {target} | {r.get('met')} |")
    return out


def _marker_color(label: str) -> str:
    if "alert" in label:
        return "red"
    if "opportunity detected" in label:
        return "darkorange"
    if "champion" in label:
        return "green"
    return "grey"


def _plots(
    out: Path, rows: list[Req], events: dict[str, float], story_tasks: list[str], rb_tasks: set[str]
) -> list[str]:
    """Quality per task group, cost per request and tier share over time, and each story task's
    quality and cost ratio against GPT-4; the PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = rows[0].t

    def group(r: Req) -> str:
        if r.task in story_tasks:
            return r.task
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
        markers(ax)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    def markers(ax: Any) -> None:
        for label, ts in events.items():
            ax.axvline(ts - t0, color=_marker_color(label), ls="--", lw=1)
            ax.text(ts - t0, ax.get_ylim()[1], label, rotation=90, va="top", ha="right", fontsize=7)

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
    names = ["quality.png", "cost.png", "tiers.png"]

    shown = [t for t in story_tasks if any(r.task == t for r in ok_rows)]
    if shown:
        fig, axes = plt.subplots(len(shown), 1, figsize=(9, 3.2 * len(shown)), squeeze=False)
        for ax, task in zip(axes[:, 0], shown, strict=True):
            sel = [r for r in ok_rows if r.task == task]
            ax.plot(*rolling(sel, lambda r: r.correct, 30), label="quality (switchyard)")
            ax.plot(*rolling(sel, lambda r: r.base_correct, 30), ls=":", label="quality (always GPT-4)")
            ax.plot(
                *rolling(sel, lambda r: (r.cost or 0.0) / r.base_cost if r.base_cost else None, 30),
                label="cost ratio vs always GPT-4",
                color="tab:purple",
            )
            ax.set_ylim(0, 1.1)
            ax.set_ylabel("rolling 30 requests")
            ax.set_title(f"{task}: quality and cost ratio")
            ax.legend(fontsize=7, loc="lower left")
            markers(ax)
        axes[-1, 0].set_xlabel("seconds since the first request")
        fig.tight_layout()
        fig.savefig(out / "stories.png", dpi=110)
        plt.close(fig)
        names.append("stories.png")
    return names


def write_report(
    out: Path,
    run_id: str,
    rows: list[Req],
    events: dict[str, float],
    summary: dict[str, Any],
    steps: dict[str, str],
    cfg: DemoSettings,
    rb_tasks: set[str],
) -> Path:
    """Markdown + PNG plots over time (quality per task group, cost/request, tier share, the
    story tasks), ``summary.json`` and ``requests.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = cfg.story_tasks
    pngs = _plots(out, rows, events, tasks, rb_tasks) if rows else []
    md = [f"# Switchyard demo {run_id}", "", "## Steps", ""]
    md += [f"- {k}: **{v}**" for k, v in steps.items()]
    md += stage_table(rows, tasks)
    md += target_table(rows, DEMO_TARGET)
    tl = summary.get("timeline") or {}
    if tl:
        md += [
            "",
            f"## Story (a): drift on {cfg.new_task}",
            "",
            f"- drift onset -> alert: {tl.get('onset_to_alert_s')} s "
            f"({tl.get('new_task_labelled_before_alert')} labelled {cfg.new_task} answers; detector "
            f"{tl.get('alert_detector')})",
            f"- alert -> new champion serving: {tl.get('alert_to_serving_s')} s",
            f"- drift onset -> new champion serving (the whole loop): {tl.get('onset_to_serving_s')} s",
        ]
    if summary.get("opportunity"):
        md += opportunity_section(summary["opportunity"])
    md += whole_section(summary.get("whole_traffic") or {})
    if summary.get("cache"):
        md += cache_section(summary["cache"])
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
    steps: dict[str, str], summary: dict[str, Any], cfg: DemoSettings, report: Path, log_dir: Path
) -> None:
    """The closing summary on stdout: steps, per-stage numbers, each story's task, the timelines."""
    new_task = cfg.new_task
    print("\n== Switchyard demo summary ==")
    for k, v in steps.items():
        print(f"  {k}: {v}")
    for key in ("steady", "drift", "after"):
        if key in summary:
            print(f"  {key:>6}: {fmt(summary[key])}")
    if "after_new_task" in summary:
        b, a_ = summary["drift_new_task"], summary["after_new_task"]
        print(
            f"  (a) {new_task}: quality {b['quality']:.3f} = {100 * b['quality_ratio']:.1f}% of GPT-4's "
            f"(drift, old router) -> {a_['quality']:.3f} = {100 * a_['quality_ratio']:.1f}% (after); "
            f"cheap tier {100 * b['cheap_share']:.0f}% -> {100 * a_['cheap_share']:.0f}%"
        )
        o = summary["after_other_tasks"]
        print(
            f"  (a) other tasks after: quality {100 * o['quality_ratio']:.1f}% of GPT-4's at "
            f"{100 * o['savings']:.1f}% lower cost"
        )
    if "timeline" in summary:
        tl = summary["timeline"]
        print(
            f"  (a) timeline: drift onset -> alert {tl.get('onset_to_alert_s')}s "
            f"({tl.get('new_task_labelled_before_alert')} labelled {new_task} answers, "
            f"{tl.get('alert_detector')} detector); alert -> new champion serving "
            f"{tl.get('alert_to_serving_s')}s; onset -> serving {tl.get('onset_to_serving_s')}s"
        )
    opp = summary.get("opportunity")
    if opp and opp.get("after"):
        t, task = opp.get("targets") or {}, opp["task"]
        ex = opp.get("exploration") or {}
        b, a_ = opp["before"], opp["after"]
        print(
            f"  (b) {task}: cost ratio {1 - b['savings']:.3f} -> {1 - a_['savings']:.3f} "
            f"(target <= {OPPORTUNITY_COST_TARGET}), quality/GPT-4 {b['quality_ratio']:.3f} -> "
            f"{a_['quality_ratio']:.3f} (target >= {OPPORTUNITY_QUALITY_TARGET}); cheap tier "
            f"{100 * b['cheap_share']:.0f}% -> {100 * a_['cheap_share']:.0f}%"
        )
        print(
            f"  (b) timeline: appears -> notice {opp.get('onset_to_notice_s')}s, notice -> new champion "
            f"serving {opp.get('notice_to_serving_s')}s (target < {OPPORTUNITY_SERVING_TARGET_S:.0f}); "
            f"exploration {(ex.get('calls') or {}).get(task, 0):.0f} calls, "
            f"${(ex.get('spend_usd') or {}).get(task, 0.0):.3f} "
            f"(cap ${ex.get('cap_usd_per_task_hour')}/task/h); "
            f"drift alerts on it: {len(opp.get('drift_alerts_on_task') or [])}; failed requests during the "
            f"swap {(t.get('failed_requests_during_swap') or {}).get('value')}"
        )
        print(f"  (b) whole traffic after: {fmt(opp['after_all'])}")
    whole = summary.get("whole_traffic") or {}
    last = whole.get("all")
    if last:
        print(
            f"  whole traffic after the loop: cost ratio {1 - last['savings']:.3f} at quality "
            f"{last['quality_ratio']:.3f} of all-GPT-4 (RouteNLP reports 0.159 at 0.971 on its own data)"
        )
    rest = whole.get("without_broken_task")
    if rest:
        print(
            f"    of which {whole['broken_task']} (cheap model broken by the emulator: GPT-4 only) is "
            f"{100 * whole['broken_task_spend_share']:.0f}% of the all-GPT-4 spend, a floor under that "
            f"ratio; the rest: cost ratio {1 - rest['savings']:.3f} at quality {rest['quality_ratio']:.3f}"
        )
    c = summary.get("cache")
    if c:
        print(
            f"  (c) semantic cache: {100 * c['hit_rate']:.1f}% of requests served from it "
            f"({100 * c['dup_hit_rate']:.1f}% of near-duplicates), {c['false_hits']} false hits, "
            f"{c['traps_served']} of {c['traps']} traps served; {100 * c['savings_vs_no_cache']:.1f}% "
            f"saved vs no cache at {c['quality_vs_no_cache']:.3f} of its quality"
        )
    if "failed_requests" in summary:
        print(f"  failed requests (all phases): {summary['failed_requests']}")
    print(f"  total time {summary['total_s']}s; report {report}; logs {log_dir}")

"""Every router kind and routing rule, evaluated out of fold (``switchyard train eval kinds``).

Every router kind is trained and scored out of fold two ways, and every routing rule
(:data:`services.router.policy.RULES`) is measured on the same scores:

- **grouped (leave-tasks-out), the lead figure**: whole tasks of every dataset (each MMLU
  subject, GSM8K, each RouterBench task) are held out together, so no task is in both train and
  test; test rows are scored with blank task features and the cold-start calibration, exactly
  as the gateway serves a task it was never trained on. Production traffic is mostly unlike the
  training data, so this is the claim about new traffic.
- **random** (5 folds by prompt hash): every task is also in training; reported beside it.

The test rows of all folds are pooled into one curve per dataset (not a mean of per-fold
figures). Per dataset: share of GPT-4 calls at 95% of GPT-4's quality, cost saving there, APGR,
CPT(50%)/CPT(80%), each with a bootstrap 95% interval; RouterBench (11 models, real per-call
costs): cost saving at 95%. The policy itself (cross-fitted thresholds at quality targets) is
measured as realized quality vs target per dataset and per task. Also: the GSM8K cascade answer
scorer (within-task folds: it reads the cheap model's answer to that task) and calibration error.
The winner, the (kind, rule) with the lowest mean grouped share@95 over MMLU and GSM8K, is what
``make router`` trains. Writes ``report.md``, ``report.json`` and ``curves.png``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from services.catalog import Catalog
from services.router.calibration import threshold_grid
from services.router.encoder import EncoderConfig
from services.router.heads import sigmoid
from services.router.policy import RULES, choose, escalation

from ..cascade import fit_cascade_table, oof_cascade_scores
from ..data import GPT4, MIXTRAL, ROUTERBENCH_MODELS, Benchmark
from ..splits import kfold, task_folds
from ..train import TrainConfig, TrainingSet, fit_calibration, fit_cold_start, oof_logits, prepare
from .metrics import (
    Curve,
    cost_saving,
    ece,
    multi_curve,
    multi_oracle,
    oracle_curve,
    random_curve,
    two_tier_curve,
)

log = logging.getLogger(__name__)

HSM = "high_school_mathematics"
SPLITS = ("grouped", "random")
TWO_TIER = ("mmlu", "gsm8k")
TARGETS = (0.9, 0.95)
PRICE_STRONG, PRICE_WEAK = 24.7, 0.24


class EvalConfig(BaseModel):
    kinds: list[str] = Field(default_factory=lambda: ["random", "knn", "mf", "mlp"])
    folds: int = 5
    grouped_folds: int = Field(
        default=10,
        ge=2,
        description="Leave-tasks-out folds. Few large folds bias a pooled curve: the held-out tasks' "
        "base rates are anti-correlated with the rest's, which the calibration learns from.",
    )
    bootstrap: int = 200
    seed: int = 0
    quality: float = 0.95
    rules: list[str] = Field(default_factory=lambda: list(RULES))
    coverages: list[float] = Field(
        default_factory=lambda: [0.8, 0.9],
        description="Cold-start per-task coverages also measured (mlp, leave-tasks-out policy).",
    )
    rb_bootstrap: int = 50


@dataclass
class Report:
    data: dict[str, Any]
    markdown_path: Path
    json_path: Path
    plot_path: Path


def split_folds(ts: TrainingSet, split: str, k: int, seed: int) -> np.ndarray:
    """Fold id per row: ``grouped`` holds whole tasks out, ``random`` folds by prompt hash."""
    if split == "grouped":
        return task_folds(ts.tasks, k, seed)
    if split == "random":
        return kfold(ts.frame["prompt_hash"], k, seed)
    raise ValueError(f"unknown split {split!r}")


def cross_fitted(
    logits: np.ndarray,
    ts: TrainingSet,
    folds: np.ndarray,
    prices: np.ndarray,
    split: str,
    rule: str,
    targets: tuple[float, ...] = TARGETS,
    coverage: float = 0.0,
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Calibrated scores and the policy's pick per row at each target, the calibration of each
    fold fitted on the other folds only. Grouped: every test row is a task the head never saw,
    served by the cold-start calibration; random: the per-task tables of the served policy.
    Only the models graded on a row are its candidates. ``coverage``: the cold-start table's
    per-task guarantee (:func:`training.train.fit_cold_start`)."""
    strong = ts.models.index(GPT4)
    tasks = np.array(ts.tasks)
    probs = np.full(logits.shape, np.nan)
    chosen = {t: np.zeros(len(tasks), dtype=int) for t in targets}
    for f in np.unique(folds):
        te, tr = folds == f, folds != f
        if split == "grouped":
            platt, table = fit_cold_start(
                logits[tr],
                ts.labels[tr],
                ts.models,
                prices,
                GPT4,
                rule=rule,
                tasks=list(tasks[tr]),
                coverage=coverage,
            )
            a = np.array([platt[m].a for m in ts.models])
            b = np.array([platt[m].b for m in ts.models])
            p = sigmoid(a * logits[te] + b)
            thr = {t: np.full(te.sum(), table.threshold(t)) for t in targets}
        else:
            cal = fit_calibration(
                logits[tr], ts.labels[tr], list(tasks[tr]), ts.models, prices, GPT4, rule=rule
            )
            p = cal.apply(logits[te], list(tasks[te]))
            thr = {t: np.array([cal.table(x)[0].threshold(t) for x in tasks[te]]) for t in targets}
        p = np.where(np.isnan(ts.labels[te]), np.nan, p)
        probs[te] = p
        for t in targets:
            chosen[t][te] = choose(p, prices, thr[t], strong=strong, rule=rule)
    return probs, chosen


def _ci(vals: np.ndarray) -> list[float]:
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def two_tier_row(
    name: str,
    esc: np.ndarray | None,
    ys: np.ndarray,
    yw: np.ndarray,
    cfg: EvalConfig,
    curve: Curve | None = None,
) -> dict[str, Any]:
    """share@95, cost saving there, APGR, CPT(50%)/CPT(80%) of ranking by ``esc``, with bootstrap
    intervals over the rows (none for the oracle and random references, given as ``curve``)."""
    c = curve if curve is not None else two_tier_curve(esc, ys, yw)

    def metrics(cv: Curve) -> tuple[float, float, float, float]:
        return cv.share_at(cfg.quality), cv.apgr(), cv.cpt(0.5), cv.cpt(0.8)

    share, apgr, cpt50, cpt80 = metrics(c)
    row: dict[str, Any] = {
        "router": name,
        "n": int(len(ys)),
        "share_at_95": share,
        "cost_saving_at_95": cost_saving(share, PRICE_STRONG, PRICE_WEAK),
        "apgr": apgr,
        "cpt50": cpt50,
        "cpt80": cpt80,
    }
    if esc is not None and cfg.bootstrap:
        rng = np.random.default_rng(cfg.seed)
        boot = np.array(
            [
                metrics(two_tier_curve(esc[i], ys[i], yw[i]))
                for i in (rng.integers(0, len(ys), len(ys)) for _ in range(cfg.bootstrap))
            ]
        )
        for j, key in enumerate(("share_at_95", "apgr", "cpt50", "cpt80")):
            row[key + "_ci"] = _ci(boot[:, j])
    return row


def _rb_point(
    p: np.ndarray,
    labels: np.ndarray,
    costs: np.ndarray,
    prices: np.ndarray,
    strong: int,
    rule: str,
    quality: float,
) -> tuple[float, float, float]:
    grid = threshold_grid(p, rule=rule, levels=80)
    return multi_curve(p, labels, costs, prices, strong, grid, rule=rule).at(quality)


def realized(
    chosen: np.ndarray,
    labels: np.ndarray,
    prices: np.ndarray,
    strong: int,
    rows: np.ndarray,
    costs: np.ndarray | None = None,
) -> dict[str, float]:
    """Realized quality (share of the strong model's), strong share and cost ratio on ``rows``."""
    idx = np.flatnonzero(rows)
    got = labels[idx, chosen[idx]]
    ref = labels[idx, strong]
    if costs is not None:
        cost = costs[np.arange(len(idx)), chosen[idx]].sum() / costs[:, strong].sum()
    else:
        cost = prices[chosen[idx]].sum() / (prices[strong] * len(idx))
    return {
        "n": int(len(idx)),
        "quality_ratio": float(np.nanmean(got) / max(np.nanmean(ref), 1e-9)),
        "strong_share": float((chosen[idx] == strong).mean()),
        "cost_ratio": float(cost),
    }


def run_evaluation(
    bench: Benchmark,
    cfg: EvalConfig,
    catalog: Catalog,
    cache_dir: Path,
    encoder: EncoderConfig,
    out_dir: Path,
) -> Report:
    """Run every measurement; write the report files; return them."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = [m for m in bench.models if m in catalog.model_ids]
    t0 = time.perf_counter()
    ts = prepare(bench, cache_dir, encoder, models)
    embed_s = time.perf_counter() - t0
    f = ts.frame
    ds = f["dataset"].to_numpy()
    tasks = np.array(ts.tasks)
    si, wi = models.index(GPT4), models.index(MIXTRAL)
    prices = np.array([catalog.blended_price(m) for m in models])
    results: dict[str, Any] = {
        "config": cfg.model_dump(),
        "encoder": encoder.to_dict(),
        "rows": {d: int((ds == d).sum()) for d in np.unique(ds)},
        "tasks": int(len(set(ts.tasks))),
    }
    present = [d for d in TWO_TIER if (ds == d).any()]
    rb_models = [m for m in ROUTERBENCH_MODELS if m in models]
    rb_idx = [models.index(m) for m in rb_models]
    rb = (ds == "routerbench") & ~np.isnan(ts.labels[:, rb_idx]).any(axis=1) if rb_idx else ds != ds
    rb_costs = bench.costs(rb_models).to_numpy()[rb] if rb.any() else None
    rb_strong = rb_models.index(GPT4) if rb.any() else 0
    refs = {}
    for d in present:
        ys, yw = ts.labels[ds == d, si], ts.labels[ds == d, wi]
        refs[d] = [
            two_tier_row("oracle", None, ys, yw, cfg, oracle_curve(ys, yw)),
            two_tier_row("random (expected)", None, ys, yw, cfg, random_curve(ys, yw)),
        ]
    if rb.any():
        sav, q = multi_oracle(ts.labels[np.ix_(rb, rb_idx)], rb_costs, rb_strong)
        refs["routerbench"] = {"oracle_cost_saving_at_95": sav, "oracle_quality": q}
    results["references"] = refs

    timing: dict[str, float] = {}
    curves: dict[str, dict[str, Curve]] = {}
    ece_rows = []
    for split in SPLITS:
        folds = split_folds(ts, split, cfg.grouped_folds if split == "grouped" else cfg.folds, cfg.seed)
        sec: dict[str, Any] = {"two_tier": {d: [] for d in present}, "routerbench": [], "policy": []}
        for kind in cfg.kinds:
            t0 = time.perf_counter()
            lg = oof_logits(
                ts, TrainConfig(kind=kind, seed=cfg.seed), folds, unknown_tasks=split == "grouped"
            )
            timing[f"{split}:{kind}"] = (time.perf_counter() - t0) / len(np.unique(folds))
            log.info("%s %s: out-of-fold in %.1fs", split, kind, time.perf_counter() - t0)
            for r_i, rule in enumerate(cfg.rules):
                probs, chosen = cross_fitted(lg, ts, folds, prices, split, rule)
                name = f"{kind} / {rule}"
                if r_i == 0:
                    ece_rows.append(
                        {
                            "split": split,
                            "router": kind,
                            "ece_raw": ece(sigmoid(lg), ts.labels),
                            "ece_calibrated": ece(probs, ts.labels),
                        }
                    )
                for d in present:
                    rows = ds == d
                    esc = escalation(probs[rows, si], probs[rows, wi], rule)
                    ys, yw = ts.labels[rows, si], ts.labels[rows, wi]
                    row = two_tier_row(name, esc, ys, yw, cfg)
                    row.update(kind=kind, rule=rule)
                    sec["two_tier"][d].append(row)
                    curves.setdefault(f"{split}:{d}", {})[name] = two_tier_curve(esc, ys, yw)
                if rb.any():
                    p = probs[np.ix_(rb, rb_idx)]
                    lab = ts.labels[np.ix_(rb, rb_idx)]
                    s, share, qual = _rb_point(p, lab, rb_costs, prices[rb_idx], rb_strong, rule, cfg.quality)
                    rng = np.random.default_rng(cfg.seed)
                    boot = [
                        _rb_point(p[i], lab[i], rb_costs[i], prices[rb_idx], rb_strong, rule, cfg.quality)[0]
                        for i in (rng.integers(0, len(p), len(p)) for _ in range(cfg.rb_bootstrap))
                    ]
                    sec["routerbench"].append(
                        {
                            "router": name,
                            "kind": kind,
                            "rule": rule,
                            "cost_saving_at_95": s,
                            "cost_saving_at_95_ci": _ci(np.array(boot)) if boot else None,
                            "strong_share": share,
                            "quality": qual,
                        }
                    )
                if kind == "random":
                    continue
                variants = [(0.0, chosen)]
                if split == "grouped" and kind == "mlp":
                    variants += [
                        (cov, cross_fitted(lg, ts, folds, prices, split, rule, coverage=cov)[1])
                        for cov in cfg.coverages
                    ]
                for target, ch, cov in ((t, c, v) for v, pick in variants for t, c in pick.items()):
                    entry: dict[str, Any] = {
                        "router": name + (f", coverage {cov:.0%}" if cov else ""),
                        "kind": kind,
                        "rule": rule,
                        "target": target,
                        "coverage": cov,
                    }
                    for d in present:
                        entry[d] = realized(ch, ts.labels, prices, si, ds == d)
                    if rb.any():
                        sub = ch[rb]
                        # RouterBench rows: real per-call costs of the chosen model
                        entry["routerbench"] = realized(
                            np.array([rb_idx.index(c) if c in rb_idx else rb_strong for c in sub]),
                            ts.labels[np.ix_(rb, rb_idx)],
                            prices[rb_idx],
                            rb_strong,
                            np.ones(int(rb.sum()), bool),
                            rb_costs,
                        )
                    entry["all"] = realized(ch, ts.labels, prices, si, np.ones(len(ds), bool))
                    entry["per_task"] = {
                        t: realized(ch, ts.labels, prices, si, tasks == t)["quality_ratio"]
                        for t in sorted(set(ts.tasks))
                    }
                    sec["policy"].append(entry)
        results[split] = sec
    results["calibration"] = ece_rows
    results["train_seconds_per_fold"] = timing
    results["embed_seconds"] = embed_s
    results["winner"] = pick_winner(results["grouped"]["two_tier"])

    # --- GSM8K cascade: OOF answer scorer over the recorded Mixtral answers (within the task) ---
    g_rows = np.flatnonzero(ds == "gsm8k")
    if len(g_rows):
        gts = ts.subset(ds == "gsm8k")
        gfolds = kfold(gts.frame["prompt_hash"], cfg.folds, cfg.seed)
        scored = oof_cascade_scores(gts, MIXTRAL, gfolds, seed=cfg.seed)
        p_ok = np.full(len(g_rows), 0.5) if scored is None else scored
        ys, yw = gts.labels[:, si], gts.labels[:, wi]
        # the cascade policy at its target: acceptance thresholds fitted on the other folds only
        accept = {t: np.zeros(len(g_rows), bool) for t in TARGETS}
        for fo in np.unique(gfolds):
            table = fit_cascade_table(gts.subset(gfolds != fo), MIXTRAL, GPT4, seed=cfg.seed)
            for t in TARGETS:
                line = table.threshold(t) if table is not None else np.inf
                accept[t][gfolds == fo] = p_ok[gfolds == fo] >= line
        cascade_policy = {
            str(t): {
                "quality_ratio": float(np.where(a, yw, ys).mean() / ys.mean()),
                "accepted_share": float(a.mean()),
                "cost_ratio": float((PRICE_WEAK + (~a).mean() * PRICE_STRONG) / PRICE_STRONG),
            }
            for t, a in accept.items()
        }
        row = two_tier_row("cascade (answer scorer)", 1 - p_ok, ys, yw, cfg)
        row["policy"] = cascade_policy
        row["cost_saving_at_95"] = cost_saving(row["share_at_95"], PRICE_STRONG, PRICE_WEAK, cascade=True)
        row["share_at_95_cost_equiv"] = row["share_at_95"] + PRICE_WEAK / PRICE_STRONG
        results["gsm8k_cascade"] = row
        curves.setdefault("random:gsm8k", {})["cascade (answer scorer)"] = two_tier_curve(1 - p_ok, ys, yw)
    results["eval_seconds"] = time.perf_counter() - t_start

    md, js, png = out_dir / "report.md", out_dir / "report.json", out_dir / "curves.png"
    js.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    _plot(curves, results, png)
    md.write_text(markdown(results), encoding="utf-8")
    return Report(results, md, js, png)


def pick_winner(two_tier: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The (kind, rule) with the lowest mean grouped share@95 over the two-tier datasets; the
    random router is a baseline, never a winner."""
    scores: dict[tuple[str, str], list[float]] = {}
    for rows in two_tier.values():
        for row in rows:
            if row["kind"] != "random":
                scores.setdefault((row["kind"], row["rule"]), []).append(row["share_at_95"])
    if not scores:
        raise ValueError("no learned router was evaluated")
    (kind, rule), vals = min(scores.items(), key=lambda kv: (np.mean(kv[1]), kv[0]))
    return {"kind": kind, "rule": rule, "mean_share_at_95": float(np.mean(vals))}


def _plot(curves: dict[str, dict[str, Curve]], r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    win = r["winner"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for ax, key, title in (
        (axes[0, 0], "grouped:mmlu", "MMLU, leave-tasks-out (pooled)"),
        (axes[0, 1], "grouped:gsm8k", "GSM8K, leave-tasks-out"),
        (axes[1, 0], "random:mmlu", "MMLU, random folds (tasks seen)"),
    ):
        for name, c in curves.get(key, {}).items():
            if name.startswith(win["kind"] + " /") or name.endswith("/ " + win["rule"]):
                ax.plot(
                    c.share, c.accuracy, label=name, lw=2 if name == f"{win['kind']} / {win['rule']}" else 1
                )
        if key in curves and curves[key]:
            c = next(iter(curves[key].values()))
            ax.plot([0, 1], [c.acc_weak, c.acc_strong], "--", color="grey", label="random")
            ax.axhline(0.95 * c.acc_strong, color="grey", lw=0.7)
        ax.set(title=title, xlabel="share of calls to GPT-4", ylabel="accuracy")
        ax.legend(fontsize=7)
    ax = axes[1, 1]
    pol = [
        e
        for e in r["grouped"]["policy"]
        if e["kind"] == win["kind"] and e["rule"] == win["rule"] and e["target"] == 0.95 and not e["coverage"]
    ]
    if pol:
        vals = sorted(pol[0]["per_task"].items(), key=lambda kv: kv[1])
        ax.barh(range(len(vals)), [v for _, v in vals], color="tab:blue")
        ax.set_yticks(range(len(vals)), [t for t, _ in vals], fontsize=5)
        ax.axvline(0.95, color="red", lw=1)
        ax.axvspan(0.935, 0.965, color="red", alpha=0.1)
    ax.set(title="Policy at target 0.95 on unseen tasks: realized / GPT-4", xlabel="quality ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(row: dict[str, Any], key: str, fmt: str = ".1%") -> str:
    v = row[key]
    ci = row.get(key + "_ci")
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else f"{v:{fmt}}"


def markdown(r: dict[str, Any]) -> str:
    """The report as markdown: grouped (leave-tasks-out) first, random folds beside it."""
    win = r["winner"]
    lines = [
        "# Router evaluation",
        "",
        f"Rows: {r['rows']} in {r['tasks']} tasks; {r['config']['grouped_folds']} leave-tasks-out folds, "
        f"{r['config']['folds']} random folds; bootstrap "
        f"{r['config']['bootstrap']} resamples (95% intervals, RouterBench {r['config']['rb_bootstrap']}); "
        f"encoder {r['encoder']}.",
        "",
        f"**Winner on leave-tasks-out: `{win['kind']}` with rule `{win['rule']}`** (mean GPT-4 share "
        f"@95% over MMLU and GSM8K {win['mean_share_at_95']:.1%}). This is what `make router` serves.",
        "",
        "Grouped = leave-tasks-out: whole tasks (each MMLU subject, GSM8K, each RouterBench task) held "
        "out together, scored with blank task features and the cold-start calibration, test rows of all "
        "folds pooled into one curve. Random = folds by prompt hash; every task is also in training.",
        "",
    ]
    for split, title in (("grouped", "leave-tasks-out (new tasks)"), ("random", "random folds (tasks seen)")):
        sec = r[split]
        for d, rows in sec["two_tier"].items():
            lines += [
                f"## {d.upper()}, two tiers, {title}",
                "",
                "| router / rule | GPT-4 share @95% | cost saving @95% | APGR | CPT(50%) | CPT(80%) |",
                "|---|---|---|---|---|---|",
            ]
            for row in [*r["references"].get(d, []), *rows]:
                lines.append(
                    f"| {row['router']} | {_fmt(row, 'share_at_95')} | {row['cost_saving_at_95']:.1%} | "
                    f"{_fmt(row, 'apgr', '.3f')} | {_fmt(row, 'cpt50')} | {_fmt(row, 'cpt80')} |"
                )
            lines.append("")
        if sec["routerbench"]:
            ref = r["references"].get("routerbench", {})
            lines += [
                f"## RouterBench, 11 models, real per-call costs, {title}",
                "",
                "Oracle (cheapest correct model): cost saving "
                f"{ref.get('oracle_cost_saving_at_95', float('nan')):.1%}.",
                "",
                "| router / rule | cost saving @95% of GPT-4 quality | GPT-4 share | quality |",
                "|---|---|---|---|",
            ]
            for row in sec["routerbench"]:
                lines.append(
                    f"| {row['router']} | {_fmt(row, 'cost_saving_at_95')} | {row['strong_share']:.1%} | "
                    f"{row['quality']:.1%} |"
                )
            lines.append("")
        lines += [
            f"## The policy at its quality target, {title}",
            "",
            "Realized quality as a share of GPT-4's, cross-fitted thresholds (target ± 1.5 points is the "
            "contract); cost ratio = cost / cost of always GPT-4 (RouterBench: real per-call costs).",
            "",
            "| router / rule | target | "
            + " | ".join(f"{d}: quality, cost" for d in [*r[split]["two_tier"], "routerbench", "all"])
            + " |",
            "|---|---|" + "---|" * (len(r[split]["two_tier"]) + 2),
        ]
        for e in sec["policy"]:
            cells = []
            for d in [*r[split]["two_tier"], "routerbench", "all"]:
                x = e.get(d)
                cells.append(f"{x['quality_ratio']:.1%}, {x['cost_ratio']:.2f}" if x else "-")
            lines.append(f"| {e['router']} | {e['target']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
        pol = [
            e
            for e in sec["policy"]
            if e["kind"] == win["kind"]
            and e["rule"] == win["rule"]
            and abs(e["target"] - r["config"]["quality"]) < 1e-9
        ]
        for e in pol:
            pt = e["per_task"]
            q = r["config"]["quality"]
            inside = np.mean([abs(v - q) <= 0.015 for v in pt.values()])
            over = np.mean([v > q + 0.015 for v in pt.values()])
            under = np.mean([v < q - 0.015 for v in pt.values()])
            lines += [
                f"Per task ({e['router']}, target {q:.2f}): "
                f"{inside:.0%} of {len(pt)} tasks within ±1.5 points, {over:.0%} over, "
                f"{under:.0%} under; median "
                f"{np.median(list(pt.values())):.1%}. "
                + ", ".join(f"{t} {v:.1%}" for t, v in sorted(pt.items(), key=lambda kv: kv[1])),
                "",
            ]
    if "gsm8k_cascade" in r:
        row = r["gsm8k_cascade"]
        lines += [
            "## GSM8K cascade (answer scorer, within-task folds)",
            "",
            "The scorer reads Mixtral's recorded answer, so it is trained on the task it judges; the cheap "
            "call is always paid (cost saving counts it).",
            "",
            f"GPT-4 share @95%: {_fmt(row, 'share_at_95')}; cost saving {row['cost_saving_at_95']:.1%}; "
            f"APGR {_fmt(row, 'apgr', '.3f')}.",
            "",
            "The cascade policy at its target (acceptance score from the table fitted on the other folds): "
            + "; ".join(
                f"target {t}: {v['quality_ratio']:.1%} of GPT-4's quality, {v['accepted_share']:.0%} of "
                f"cheap answers accepted, cost ratio {v['cost_ratio']:.2f}"
                for t, v in row.get("policy", {}).items()
            )
            + ".",
            "",
        ]
    lines += [
        "## Calibration error (ECE over graded pairs)",
        "",
        "| split | router | raw | calibrated |",
        "|---|---|---|---|",
    ]
    for row in r["calibration"]:
        lines.append(
            f"| {row['split']} | {row['router']} | {row['ece_raw']:.3f} | {row['ece_calibrated']:.3f} |"
        )
    t = r.get("train_seconds_per_fold", {})
    lines += [
        "",
        "Training time per fold (heads on cached embeddings): "
        + ", ".join(f"{k} {v:.1f}s" for k, v in t.items())
        + f"; whole evaluation {r.get('eval_seconds', 0):.0f}s.",
        "",
        "![curves](curves.png)",
        "",
    ]
    return "\n".join(lines)

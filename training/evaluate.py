"""The evaluation harness behind ``switchyard router eval``.

Every router kind is trained and scored out of fold (5 group-safe folds over all the bootstrap
data, the way production trains), then measured per benchmark:

- MMLU two tiers (GPT-4 vs Mixtral), with and without high_school_mathematics: share of GPT-4
  calls to keep 95% of GPT-4's accuracy (bootstrap 95% interval), cost saving at that point
  (RouteLLM prices $24.7/M vs $0.24/M), APGR, CPT(50%), CPT(80%); oracle and random references.
- leave-subjects-out MMLU: whole subject groups held out of training, per group.
- GSM8K: prompt-only routing, and the cascade answer scorer (reads Mixtral's recorded answer;
  the cheap call is always paid).
- RouterBench: all 11 models, real per-call costs, cost saving at 95% of GPT-4's quality.
- calibration error (ECE) of raw and calibrated scores; whether the policy's calibrated
  threshold for a 0.95 target keeps 0.95 on held-out folds (thresholds cross-fitted).
Writes ``report.md``, ``report.json`` and ``curves.png`` into the output directory.
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
from services.router.encoder import EncoderConfig
from services.router.heads import sigmoid
from services.router.policy import choose

from .data import GPT4, MIXTRAL, ROUTERBENCH_MODELS, Benchmark
from .metrics import (
    Curve,
    bootstrap,
    cost_saving,
    ece,
    multi_curve,
    multi_oracle,
    oracle_curve,
    random_curve,
    two_tier_curve,
)
from .splits import kfold, leave_tasks_out
from .train import TrainConfig, TrainingSet, cascade_design, fit_calibration, fit_cascade, oof_logits, prepare

log = logging.getLogger(__name__)

HSM = "high_school_mathematics"
PRICE_STRONG, PRICE_WEAK = 24.7, 0.24


class EvalConfig(BaseModel):
    kinds: list[str] = Field(default_factory=lambda: ["random", "knn", "mf", "mlp"])
    folds: int = 5
    bootstrap: int = 200
    groups: int = 5
    seed: int = 0
    quality: float = 0.95


@dataclass
class Report:
    data: dict[str, Any]
    markdown_path: Path
    json_path: Path
    plot_path: Path


def _two_tier_row(
    name: str,
    curve: Curve,
    gain: np.ndarray | None,
    ys: np.ndarray,
    yw: np.ndarray,
    cfg: EvalConfig,
    *,
    cascade: bool = False,
) -> dict[str, Any]:
    s = curve.share_at(cfg.quality)
    row: dict[str, Any] = {
        "router": name,
        "n": int(len(ys)),
        "share_at_95": s,
        "cost_saving_at_95": cost_saving(s, PRICE_STRONG, PRICE_WEAK, cascade=cascade),
        "apgr": curve.apgr(),
        "cpt50": curve.cpt(0.5),
        "cpt80": curve.cpt(0.8),
    }
    if gain is not None and cfg.bootstrap:
        row["share_at_95_ci"] = bootstrap(
            lambda i: two_tier_curve(gain[i], ys[i], yw[i]).share_at(cfg.quality),
            len(ys),
            cfg.bootstrap,
            cfg.seed,
        )
        row["apgr_ci"] = bootstrap(
            lambda i: two_tier_curve(gain[i], ys[i], yw[i]).apgr(),
            len(ys),
            max(cfg.bootstrap // 2, 1),
            cfg.seed,
        )
    return row


def _refs(ys: np.ndarray, yw: np.ndarray, cfg: EvalConfig) -> list[dict[str, Any]]:
    return [
        _two_tier_row("oracle", oracle_curve(ys, yw), None, ys, yw, cfg),
        _two_tier_row("random (expected)", random_curve(ys, yw), None, ys, yw, cfg),
    ]


def _fmt_ci(row: dict[str, Any], key: str, fmt: str = ".1%") -> str:
    v = row[key]
    ci = row.get(key + "_ci")
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else f"{v:{fmt}}"


def _cross_fitted_policy(
    probs_logits: np.ndarray, ts: TrainingSet, folds: np.ndarray, prices: np.ndarray, target: float
) -> np.ndarray:
    """Per row the model the policy picks at ``target``, its calibration fitted on the other folds."""
    chosen = np.zeros(len(ts.frame), dtype=int)
    strong = ts.models.index(GPT4)
    tasks = np.array(ts.tasks)
    for f in np.unique(folds):
        test = folds == f
        cal = fit_calibration(
            probs_logits[~test], ts.labels[~test], list(tasks[~test]), ts.models, prices, GPT4
        )
        p = cal.apply(probs_logits[test], list(tasks[test]))
        p = np.where(np.isnan(ts.labels[test]), np.nan, p)
        thr = np.array([cal.table(t)[0].threshold(target) for t in tasks[test]])
        chosen[test] = choose(p, prices, thr, strong=strong, rule=cal.rule)
    return chosen


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
    folds = kfold(f["prompt_hash"], cfg.folds, cfg.seed)
    ds = f["dataset"].to_numpy()
    tasks = np.array(ts.tasks)
    si, wi = models.index(GPT4), models.index(MIXTRAL)
    prices = np.array([catalog.blended_price(m) for m in models])
    results: dict[str, Any] = {
        "config": cfg.model_dump(),
        "encoder": encoder.to_dict(),
        "rows": {d: int((ds == d).sum()) for d in np.unique(ds)},
    }

    oof: dict[str, np.ndarray] = {}
    timing: dict[str, float] = {}
    for kind in cfg.kinds:
        t0 = time.perf_counter()
        oof[kind] = oof_logits(ts, TrainConfig(kind=kind, seed=cfg.seed), folds)
        timing[kind] = (time.perf_counter() - t0) / cfg.folds
        log.info("%s: out-of-fold in %.1fs", kind, timing[kind] * cfg.folds)
    results["train_seconds_per_fold"] = timing
    results["embed_seconds"] = embed_s

    # --- MMLU two tiers ---------------------------------------------------------------------
    mmlu_sets = {
        "mmlu": ds == "mmlu",
        "mmlu_without_hsm": (ds == "mmlu") & (tasks != HSM),
        "gsm8k": ds == "gsm8k",
    }
    curves: dict[str, dict[str, Curve]] = {}
    for name, rows in mmlu_sets.items():
        ys, yw = ts.labels[rows, si], ts.labels[rows, wi]
        table = _refs(ys, yw, cfg)
        curves[name] = {"oracle": oracle_curve(ys, yw), "random": random_curve(ys, yw)}
        for kind in cfg.kinds:
            p = sigmoid(oof[kind][rows])
            gain = p[:, si] - p[:, wi]
            c = two_tier_curve(gain, ys, yw)
            curves[name][kind] = c
            table.append(_two_tier_row(kind, c, gain, ys, yw, cfg))
            if kind == "mlp" and name != "gsm8k":
                g2 = -p[:, wi]
                table.append(
                    _two_tier_row("mlp, ranked by P(weak) only", two_tier_curve(g2, ys, yw), g2, ys, yw, cfg)
                )
        results[name] = table

    # --- GSM8K cascade: OOF answer scorer over the recorded Mixtral answers ------------------
    g_rows = np.flatnonzero(ds == "gsm8k")
    gts = ts.subset(ds == "gsm8k")
    if len(g_rows):
        gfolds = folds[g_rows]
        p_ok = np.zeros(len(g_rows))
        for fo in np.unique(gfolds):
            tr = gfolds != fo
            fit = fit_cascade(gts.subset(tr), MIXTRAL, seed=cfg.seed)
            if fit is None:
                continue
            _, params = fit
            x = cascade_design(gts, gfolds == fo, MIXTRAL)
            z = ((x - params["mean"]) / params["std"]) @ params["coef"] + params["intercept"][0]
            p_ok[gfolds == fo] = sigmoid(z)
        ys, yw = gts.labels[:, si], gts.labels[:, wi]
        c = two_tier_curve(1 - p_ok, ys, yw)
        curves["gsm8k"]["cascade"] = c
        row = _two_tier_row("cascade (answer scorer)", c, 1 - p_ok, ys, yw, cfg, cascade=True)
        row["share_at_95_cost_equiv"] = row["share_at_95"] + PRICE_WEAK / PRICE_STRONG
        results["gsm8k"].append(row)

    # --- leave-subjects-out -------------------------------------------------------------------
    lso = []
    lso_kinds = [k for k in cfg.kinds if k != "random"]
    for gname, held, train, test in leave_tasks_out(f, n_groups=cfg.groups, seed=cfg.seed):
        ys, yw = ts.labels[test, si], ts.labels[test, wi]
        entry: dict[str, Any] = {
            "group": gname,
            "subjects": held,
            "n": int(test.sum()),
            "oracle": oracle_curve(ys, yw).share_at(cfg.quality),
            "random": random_curve(ys, yw).share_at(cfg.quality),
        }
        fold_ids = np.where(test, 0, np.where(train, 1, 2))  # 2 = dropped (shares a prompt with the test set)
        keep = fold_ids < 2
        sub = ts.subset(keep)
        for kind in lso_kinds:
            lg = oof_logits(sub, TrainConfig(kind=kind, seed=cfg.seed), fold_ids[keep], None)
            p = sigmoid(lg[fold_ids[keep] == 0])
            c = two_tier_curve(p[:, si] - p[:, wi], ys, yw)
            entry[kind] = c.share_at(cfg.quality)
            entry[kind + "_apgr"] = c.apgr()
        lso.append(entry)
    results["leave_subjects_out"] = lso

    # --- RouterBench: 11 models, real costs -----------------------------------------------------
    rb_models = [m for m in ROUTERBENCH_MODELS if m in models]
    rb = ds == "routerbench"
    rb_idx = [models.index(m) for m in rb_models]
    rb_out: dict[str, Any] = {}
    rb_curves = {}
    if rb.any():
        # a few RouterBench rows lack a grade for some model: leave them out of this section
        rb = rb & ~np.isnan(ts.labels[:, rb_idx]).any(axis=1)
        labels = ts.labels[np.ix_(rb, rb_idx)]
        costs = bench.costs(rb_models).to_numpy()[rb]
        rb_prices = prices[rb_idx]
        strong = rb_models.index(GPT4)
        sav, q = multi_oracle(labels, costs, strong)
        table = [{"router": "oracle", "cost_saving_at_95": sav, "quality": q, "strong_share": float("nan")}]
        per_task: dict[str, list[dict[str, Any]]] = {}
        from services.router.calibration import threshold_grid

        for kind in cfg.kinds:
            p = sigmoid(oof[kind][np.ix_(rb, rb_idx)])
            mc = multi_curve(p, labels, costs, rb_prices, strong, threshold_grid(p))
            rb_curves[kind] = mc
            s, share, qual = mc.at(cfg.quality)
            table.append({"router": kind, "cost_saving_at_95": s, "strong_share": share, "quality": qual})
            for t in sorted(set(tasks[rb])):
                m = tasks[rb] == t
                mt = multi_curve(p[m], labels[m], costs[m], rb_prices, strong, threshold_grid(p[m]))
                s, share, qual = mt.at(cfg.quality)
                per_task.setdefault(t, []).append(
                    {"router": kind, "cost_saving_at_95": s, "strong_share": share}
                )
        for t in sorted(set(tasks[rb])):
            m = tasks[rb] == t
            sav, _ = multi_oracle(labels[m], costs[m], strong)
            per_task[t].insert(
                0, {"router": "oracle", "cost_saving_at_95": sav, "strong_share": float("nan")}
            )
        rb_out = {
            "models": rb_models,
            "table": table,
            "per_task": per_task,
            "n": int(rb.sum()),
            "gpt4_accuracy": float(labels[:, strong].mean()),
            "gpt4_cost_per_call": float(costs[:, strong].mean()),
        }
    results["routerbench"] = rb_out

    # --- calibration + the policy at 0.95 (thresholds cross-fitted over folds) ------------------
    cal_rows = []
    for kind in cfg.kinds:
        raw = sigmoid(oof[kind])
        row = {"router": kind, "ece_raw": ece(raw, ts.labels)}
        if kind in ("mlp", "mf", "knn"):
            chosen = _cross_fitted_policy(oof[kind], ts, folds, prices, cfg.quality)
            # calibrated ECE, cross-fitted as well
            calp = np.zeros_like(raw)
            for fo in np.unique(folds):
                te = folds == fo
                cal = fit_calibration(oof[kind][~te], ts.labels[~te], list(tasks[~te]), models, prices, GPT4)
                calp[te] = cal.apply(oof[kind][te], list(tasks[te]))
            row["ece_calibrated"] = ece(calp, ts.labels)
            for d in ("mmlu", "gsm8k", "routerbench"):
                m = ds == d
                if not m.any():
                    continue
                lab = ts.labels[np.flatnonzero(m), chosen[m]]
                row[f"policy_{d}_quality_ratio"] = float(np.nanmean(lab) / np.nanmean(ts.labels[m, si]))
                row[f"policy_{d}_strong_share"] = float((chosen[m] == si).mean())
        cal_rows.append(row)
    results["calibration"] = cal_rows
    results["eval_seconds"] = time.perf_counter() - t_start

    md, js, png = out_dir / "report.md", out_dir / "report.json", out_dir / "curves.png"
    js.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    _plot(curves, rb_curves, rb_out, lso, png)
    md.write_text(_markdown(results), encoding="utf-8")
    return Report(results, md, js, png)


def _plot(curves: dict[str, dict[str, Curve]], rb_curves: dict, rb_out: dict, lso: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for ax, name, title in (
        (axes[0, 0], "mmlu", "MMLU (out-of-fold)"),
        (axes[0, 1], "gsm8k", "GSM8K (out-of-fold)"),
    ):
        for k, c in curves.get(name, {}).items():
            style = "--" if k in ("oracle", "random") else "-"
            ax.plot(c.share, c.accuracy, style, label=k)
        if name in curves:
            ax.axhline(0.95 * curves[name]["oracle"].acc_strong, color="grey", lw=0.7)
        ax.set(title=title, xlabel="share of calls to GPT-4", ylabel="accuracy")
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    for k, mc in rb_curves.items():
        order = np.argsort(mc.cost)
        ax.plot(mc.cost[order] * 1000, mc.quality[order], label=k)
    if rb_out:
        ax.axhline(0.95 * rb_out["gpt4_accuracy"], color="grey", lw=0.7)
        ax.axvline(rb_out["gpt4_cost_per_call"] * 1000, color="grey", lw=0.7, ls=":")
    ax.set(
        title="RouterBench, 11 models (out-of-fold)", xlabel="USD per 1k calls (real costs)", ylabel="quality"
    )
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    if lso:
        keys = [k for k in ("oracle", "random", "knn", "mf", "mlp") if k in lso[0]]
        x = np.arange(len(lso))
        w = 0.8 / len(keys)
        for i, k in enumerate(keys):
            ax.bar(x + i * w, [e[k] for e in lso], w, label=k)
        ax.set_xticks(x + 0.4 - w / 2, [e["group"] for e in lso])
    ax.set(title="MMLU leave-subjects-out: GPT-4 share for 95%", ylabel="share of calls to GPT-4")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Router evaluation",
        "",
        f"Rows: {r['rows']}; {r['config']['folds']}-fold out-of-fold (group-safe by prompt hash), "
        f"bootstrap {r['config']['bootstrap']} resamples (95% intervals); encoder {r['encoder']}.",
        "",
    ]
    for name, title in (
        ("mmlu", "MMLU, two tiers (GPT-4 vs Mixtral)"),
        ("mmlu_without_hsm", "MMLU without high_school_mathematics"),
        ("gsm8k", "GSM8K, two tiers"),
    ):
        lines += [
            f"## {title}",
            "",
            "| router | GPT-4 share @95% | cost saving @95% | APGR | CPT(50%) | CPT(80%) |",
            "|---|---|---|---|---|---|",
        ]
        for row in r.get(name, []):
            lines.append(
                f"| {row['router']} | {_fmt_ci(row, 'share_at_95')} | {row['cost_saving_at_95']:.1%} | "
                f"{_fmt_ci(row, 'apgr', '.3f')} | "
                f"{row['cpt50']:.1%} | {row['cpt80']:.1%} |"
            )
        lines.append("")
    lines += [
        "The cascade row pays the cheap call on every query (cost saving counts it).",
        "",
        "## MMLU leave-subjects-out (GPT-4 share @95%, per held-out group)",
        "",
    ]
    lso = r.get("leave_subjects_out", [])
    if lso:
        keys = [k for k in ("oracle", "random", "knn", "mf", "mlp") if k in lso[0]]
        lines += ["| group | n | subjects | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
        for e in lso:
            lines.append(
                f"| {e['group']} | {e['n']} | {len(e['subjects'])} | "
                + " | ".join(f"{e[k]:.1%}" for k in keys)
                + " |"
            )
        lines.append("| mean | | | " + " | ".join(f"{np.mean([e[k] for e in lso]):.1%}" for k in keys) + " |")
    rb = r.get("routerbench") or {}
    if rb:
        lines += [
            "",
            f"## RouterBench, {len(rb['models'])} models, real per-call costs",
            "",
            f"{rb['n']} rows graded for all models; GPT-4 accuracy {rb['gpt4_accuracy']:.1%}, "
            f"${rb['gpt4_cost_per_call'] * 1000:.2f} per 1k calls. Oracle: the cheapest correct model.",
            "",
            "| router | cost saving @95% of GPT-4 quality | GPT-4 share | quality |",
            "|---|---|---|---|",
        ]
        for row in rb["table"]:
            lines.append(
                f"| {row['router']} | {row['cost_saving_at_95']:.1%} | {row['strong_share']:.1%} | "
                f"{row['quality']:.1%} |"
            )
        lines += [
            "",
            "Per task (cost saving @95%):",
            "",
            "| task | " + " | ".join(x["router"] for x in next(iter(rb["per_task"].values()))) + " |",
            "|---" * (1 + len(next(iter(rb["per_task"].values())))) + "|",
        ]
        for t, rows in rb["per_task"].items():
            lines.append(f"| {t} | " + " | ".join(f"{x['cost_saving_at_95']:.1%}" for x in rows) + " |")
    lines += [
        "",
        "## Calibration and the policy at quality_target 0.95",
        "",
        "ECE over all graded (query, model) pairs; the policy's thresholds are fitted on the other folds.",
        "",
        "| router | ECE raw | ECE calibrated | MMLU kept / GPT-4 share | GSM8K kept / share "
        "| RouterBench kept / share |",
        "|---|---|---|---|---|---|",
    ]
    for row in r.get("calibration", []):

        def cell(d: str, row: dict = row) -> str:
            k = f"policy_{d}_quality_ratio"
            return f"{row[k]:.1%} / {row[f'policy_{d}_strong_share']:.1%}" if k in row else "-"

        lines.append(
            f"| {row['router']} | {row['ece_raw']:.3f} | {row.get('ece_calibrated', float('nan')):.3f} | "
            f"{cell('mmlu')} | {cell('gsm8k')} | {cell('routerbench')} |"
        )
    t = r.get("train_seconds_per_fold", {})
    lines += [
        "",
        "Training time per fold (heads on cached embeddings, this machine): "
        + ", ".join(f"{k} {v:.1f}s" for k, v in t.items())
        + f"; whole evaluation {r.get('eval_seconds', 0):.0f}s.",
        "",
        "![curves](curves.png)",
        "",
    ]
    return "\n".join(lines)

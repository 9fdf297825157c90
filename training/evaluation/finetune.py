"""Does fine-tuning the encoder beat the frozen-encoder MLP?  (``switchyard train eval finetune``)

Same conventions as :mod:`training.evaluation.kinds`: folds are a pure function of the prompt hash
(:func:`training.splits.kfold`, so the MMLU rows fall in exactly the folds the main report uses),
leave-subjects-out holds whole subject groups out (:func:`training.splits.leave_tasks_out`),
bootstrap 95% intervals. Every fine-tuned model is compared with, on the very same rows:

- ``mlp``: the frozen-encoder MLP trained on all training rows of the fold (the production kind);
- ``probe``: the same MLP fitted on the fine-tuning's training part only (the validation slice held
  out): the fine-tuning's starting point, so ``finetune - probe`` is what the encoder update adds;
- ``finetune``: top K layers + head, early-stopped on the validation slice.

Trains on the MMLU rows only (fine-tuning all 16k bootstrap rows is a GPU job); the report is
written after every fold, so a cut-off run still leaves what it finished.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.router.encoder import Encoder, EncoderConfig, pick_device
from services.router.heads import features, sigmoid

from ..data import GPT4, MIXTRAL, Benchmark
from ..finetune import FinetuneConfig, HiddenStateCache, finetune_rows, predict
from ..splits import kfold, leave_tasks_out, train_mask
from ..train import TrainConfig, fit_head, head_logits, prepare, task_vocab
from .kinds import HSM
from .metrics import bootstrap, oracle_curve, random_curve, two_tier_curve

log = logging.getLogger(__name__)

ROUTERS = ("mlp", "probe", "finetune")


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _summary(
    logits: dict[str, np.ndarray],
    rows: np.ndarray,
    ys: np.ndarray,
    yw: np.ndarray,
    si: int,
    wi: int,
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    out = [
        {
            "router": "oracle",
            "share_at_95": oracle_curve(ys, yw).share_at(0.95),
            "apgr": oracle_curve(ys, yw).apgr(),
        },
        {"router": "random", "share_at_95": random_curve(ys, yw).share_at(0.95), "apgr": 0.5},
    ]
    for name, lg in logits.items():
        p = sigmoid(lg[rows])
        gain = p[:, si] - p[:, wi]
        c = two_tier_curve(gain, ys, yw)
        row = {"router": name, "share_at_95": c.share_at(0.95), "apgr": c.apgr()}
        if n_boot:
            row["share_at_95_ci"] = bootstrap(
                lambda i, g=gain: two_tier_curve(g[i], ys[i], yw[i]).share_at(0.95), len(ys), n_boot, seed
            )
        out.append(row)
    if n_boot and "mlp" in logits:  # paired: the same resampled rows for both routers

        def gain_of(name: str) -> np.ndarray:
            p = sigmoid(logits[name][rows])
            return p[:, si] - p[:, wi]

        g_mlp = gain_of("mlp")
        for row in out:
            if row["router"] in logits and row["router"] != "mlp":
                g = gain_of(row["router"])
                row["minus_mlp_ci"] = bootstrap(
                    lambda i, g=g: (
                        two_tier_curve(g[i], ys[i], yw[i]).share_at(0.95)
                        - two_tier_curve(g_mlp[i], ys[i], yw[i]).share_at(0.95)
                    ),
                    len(ys),
                    n_boot,
                    seed,
                )
    return out


def run_finetune_evaluation(
    bench: Benchmark,
    ft: FinetuneConfig,
    cache_dir: Path,
    out_dir: Path,
    *,
    folds: int = 5,
    groups: int = 5,
    parts: tuple[str, ...] = ("kfold", "lso"),
    only: list[int] | None = None,
    n_boot: int = 200,
    encoder: EncoderConfig | None = None,
) -> dict[str, Any]:
    """Run the comparison; writes ``finetune.json`` (+ ``finetune.md``) into ``out_dir``."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "finetune.json"
    part_files = {p: out_dir / f"finetune-{p}.json" for p in ("kfold", "lso")}
    results: dict[str, Any] = {"config": ft.model_dump()}
    same = ft.model_dump(exclude={"threads", "device"})

    def finished(path: Path) -> dict[str, Any]:
        """Folds other runs (or processes) finished with this configuration: resume / merge."""
        return {k: v for k, v in _load_json(path).items() if v.get("config") == same}

    for p, path in part_files.items():
        results[p] = finished(path)
    t0 = time.perf_counter()
    encoder = encoder or EncoderConfig()
    ts = prepare(bench, cache_dir, encoder, [GPT4, MIXTRAL], device=ft.device)
    enc = Encoder(encoder, device=pick_device(ft.device))
    states = HiddenStateCache(cache_dir, enc, ft.cached_layer).states(
        ts.frame["prompt"].tolist(), ts.frame["prompt_hash"].tolist()
    )
    results["prepare_seconds"] = time.perf_counter() - t0
    hashes = ts.frame["prompt_hash"]
    tasks = np.array(ts.tasks)
    si, wi = 0, 1
    mlp_cfg = TrainConfig(kind="mlp", seed=ft.seed, device=ft.device)

    def one(train: np.ndarray, test: np.ndarray, vocab: list[str]) -> dict[str, Any]:
        tr, te = np.flatnonzero(train), np.flatnonzero(test)
        x = features(ts.embeddings, ts.tasks, vocab)
        c0 = time.process_time()
        t = time.perf_counter()
        params, opts = fit_head("mlp", ts.embeddings[tr], x[tr], ts.labels[tr], mlp_cfg)
        mlp_s = time.perf_counter() - t
        c1 = time.process_time()
        res = finetune_rows(ts, states, tr, vocab, enc.model, ft)
        lg, _ = predict(res, [states[i] for i in te], [ts.tasks[i] for i in te], vocab)
        return {
            "test": te.tolist(),
            "mlp": head_logits("mlp", params, opts, x[te]).tolist(),
            "probe": head_logits("mlp", res.probe, {}, x[te]).tolist(),
            "finetune": lg.tolist(),
            "mlp_seconds": mlp_s,
            "finetune_seconds": res.seconds,
            "finetune_cpu_seconds": time.process_time() - c1,
            "mlp_cpu_seconds": c1 - c0,
            "best_step": res.best_step,
            "history": res.history,
            "train_rows": len(tr),
            "amp_bf16": res.amp,
            "threads": torch.get_num_threads(),
            "config": same,
        }

    if "kfold" in parts:
        fold_ids = kfold(hashes, folds, ft.seed)
        done = results["kfold"]
        for f in range(folds):
            if (only is not None and f not in only) or str(f) in done:
                continue
            test = fold_ids == f
            r = one(train_mask(hashes, test), test, task_vocab(ts.tasks))
            done[str(f)] = r
            log.info("fold %d: finetune %.0fs, best step %d", f, r["finetune_seconds"], r["best_step"])
            part_files["kfold"].write_text(json.dumps(done), encoding="utf-8")
    if "lso" in parts:
        done = results["lso"]
        for g, (gname, held, train, test) in enumerate(
            leave_tasks_out(ts.frame, n_groups=groups, seed=ft.seed)
        ):
            if (only is not None and g not in only) or gname in done:
                continue
            keep = train | test
            vocab = task_vocab([t for t, k in zip(ts.tasks, keep, strict=True) if k])
            r = one(train, test, vocab)
            r["subjects"] = held
            done[gname] = r
            log.info("%s: finetune %.0fs, best step %d", gname, r["finetune_seconds"], r["best_step"])
            part_files["lso"].write_text(json.dumps(done), encoding="utf-8")
    for p, path in part_files.items():
        results[p] = finished(path)
    results["summary"] = summarise(results, ts.labels[:, si], ts.labels[:, wi], tasks, n_boot, ft.seed)
    js.write_text(
        json.dumps({k: v for k, v in results.items() if k not in part_files}, indent=1), encoding="utf-8"
    )
    (out_dir / "finetune.md").write_text(markdown(results), encoding="utf-8")
    return results


def summarise(
    results: dict[str, Any], ys_all: np.ndarray, yw_all: np.ndarray, tasks: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kf = results.get("kfold", {})
    if kf:
        te = np.concatenate([np.array(r["test"], dtype=int) for r in kf.values()])
        logits = {k: np.concatenate([np.array(r[k]) for r in kf.values()]) for k in ROUTERS}
        for name, sel in (("mmlu", np.ones(len(te), bool)), ("mmlu_without_hsm", tasks[te] != HSM)):
            rows = np.flatnonzero(sel)
            out[name] = _summary(logits, rows, ys_all[te][rows], yw_all[te][rows], 0, 1, n_boot, seed)
            out[name + "_rows"] = len(rows)
        out["folds_done"] = sorted(kf)
        out["rows"] = len(te)
        out["kfold_seconds_per_fold"] = {
            "mlp": float(np.mean([r["mlp_seconds"] for r in kf.values()])),
            "finetune": float(np.mean([r["finetune_seconds"] for r in kf.values()])),
            "finetune_cpu": float(np.mean([r["finetune_cpu_seconds"] for r in kf.values()])),
        }
    lso = results.get("lso", {})
    if lso:
        per = []
        for gname, r in lso.items():
            te = np.array(r["test"], dtype=int)
            ys, yw = ys_all[te], yw_all[te]
            entry = {"group": gname, "n": len(te), "subjects": len(r["subjects"])}
            for row in _summary(
                {k: np.array(r[k]) for k in ROUTERS}, np.arange(len(te)), ys, yw, 0, 1, 0, seed
            ):
                entry[row["router"]] = row["share_at_95"]
                entry[row["router"] + "_apgr"] = row["apgr"]
            entry["finetune_seconds"] = r["finetune_seconds"]
            per.append(entry)
        out["lso"] = per
        out["lso_mean"] = {k: float(np.mean([e[k] for e in per])) for k in ("oracle", "random", *ROUTERS)}
    return out


def _cell(row: dict[str, Any]) -> str:
    ci = row.get("share_at_95_ci")
    d = row.get("minus_mlp_ci")
    return (
        f"{row['share_at_95']:.1%}"
        + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")
        + (f"; minus mlp, paired 95% interval [{d[0]:+.1%}, {d[1]:+.1%}]" if d else "")
    )


def markdown(results: dict[str, Any]) -> str:
    s = results.get("summary", {})
    cfg = results.get("config", {})
    lines = [
        "# Fine-tuned encoder vs frozen-encoder MLP (MMLU, trained on MMLU rows only)",
        "",
        f"Config: {cfg}",
        "",
    ]
    for name in ("mmlu", "mmlu_without_hsm"):
        if name not in s:
            continue
        lines += [
            f"## {name} (folds {s['folds_done']}, {s[name + '_rows']} rows, out of fold)",
            "",
            "| router | GPT-4 share @95% | APGR |",
            "|---|---|---|",
        ]
        lines += [f"| {r['router']} | {_cell(r)} | {r['apgr']:.3f} |" for r in s[name]]
        lines.append("")
    if "kfold_seconds_per_fold" in s:
        t = s["kfold_seconds_per_fold"]
        lines += [
            f"Training time per fold: frozen MLP {t['mlp']:.1f}s, fine-tune {t['finetune']:.0f}s wall "
            f"({t['finetune_cpu']:.0f} CPU-s).",
            "",
        ]
    if "lso" in s:
        keys = ("oracle", "random", *ROUTERS)
        lines += [
            "## Leave-subjects-out (GPT-4 share @95%)",
            "",
            "| group | n | subjects | " + " | ".join(keys) + " |",
            "|---" * (3 + len(keys)) + "|",
        ]
        for e in s["lso"]:
            lines.append(
                f"| {e['group']} | {e['n']} | {e['subjects']} | "
                + " | ".join(f"{e[k]:.1%}" for k in keys)
                + " |"
            )
        lines.append("| mean | | | " + " | ".join(f"{s['lso_mean'][k]:.1%}" for k in keys) + " |")
    return "\n".join(lines) + "\n"

"""Two encoders, the same router recipe, the same rows: a paired comparison of share@95 and APGR.

``switchyard train eval kinds`` gives each encoder its own interval; whether a difference of a
point or two between them is real needs the *paired* interval: the same bootstrap resample of
rows for both. This computes, exactly as the kinds evaluation does (same folds, MLP, the served
rule, cross-fitted cold-start calibration on leave-tasks-out folds), the escalation score of
every MMLU and GSM8K row under each encoder, then the difference B − A with a 95% paired
bootstrap interval. Embeddings come from the caches (``train eval kinds`` fills them).

    flock /tmp/heavy.lock .venv/bin/python bench/encoder_paired.py \\
        --a onnx:128:int8 --b static:128:pca256 --out reports/router-static/paired.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router_speed import parse_variant  # noqa: E402

from services.catalog import load_catalog  # noqa: E402
from services.router.policy import escalation  # noqa: E402
from training.data import DATASETS, GPT4, MIXTRAL, load_benchmark  # noqa: E402
from training.evaluation.kinds import cross_fitted, split_folds  # noqa: E402
from training.evaluation.metrics import two_tier_curve  # noqa: E402
from training.train import TrainConfig, oof_logits, prepare  # noqa: E402

log = logging.getLogger("encoder_paired")


def escalations(spec: str, bench, catalog, cache_dir: Path, args) -> tuple[dict, dict]:  # noqa: ANN001
    """Per dataset: the escalation score of every row (grouped or random folds, MLP, ``rule``)."""
    models = [m for m in bench.models if m in catalog.model_ids]
    ts = prepare(bench, cache_dir, parse_variant(spec), models)
    folds = split_folds(ts, args.split, args.folds, 0)
    lg = oof_logits(ts, TrainConfig(kind="mlp", seed=0), folds, unknown_tasks=args.split == "grouped")
    prices = np.array([catalog.blended_price(m) for m in models])
    probs, _ = cross_fitted(lg, ts, folds, prices, args.split, args.rule)
    ds = ts.frame["dataset"].to_numpy()
    si, wi = models.index(GPT4), models.index(MIXTRAL)
    esc, lab = {}, {}
    for d in ("mmlu", "gsm8k"):
        rows = ds == d
        esc[d] = escalation(probs[rows, si], probs[rows, wi], args.rule)
        lab[d] = (ts.labels[rows, si], ts.labels[rows, wi])
    return esc, lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", default="onnx:128:int8", help="Reference encoder (router_speed variant syntax).")
    ap.add_argument("--b", default="static:128:pca256", help="Encoder compared with it.")
    ap.add_argument("--split", default="grouped", choices=("grouped", "random"))
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--rule", default="gap")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("SWITCHYARD_DATA_DIR", "../shared/data"))
    )
    ap.add_argument("--state-dir", type=Path, default=Path(os.environ.get("SWITCHYARD_STATE_DIR", ".state")))
    ap.add_argument("--out", type=Path, default=Path("reports/router-static/paired.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # the table `train eval kinds` builds (same rows, same order: the same folds and fits)
    bench, catalog = load_benchmark(args.data_dir, list(DATASETS)), load_catalog(None)
    cache = args.state_dir / "cache" / "embeddings"
    ea, lab = escalations(args.a, bench, catalog, cache, args)
    eb, _ = escalations(args.b, bench, catalog, cache, args)
    out: dict = {"a": args.a, "b": args.b, "split": args.split, "rule": args.rule, "router": "mlp"}
    rng = np.random.default_rng(0)
    for d in ea:
        ys, yw = lab[d]

        def point(idx: np.ndarray, d: str = d, ys: np.ndarray = ys, yw: np.ndarray = yw) -> np.ndarray:
            ca = two_tier_curve(ea[d][idx], ys[idx], yw[idx])
            cb = two_tier_curve(eb[d][idx], ys[idx], yw[idx])
            return np.array([ca.share_at(0.95), cb.share_at(0.95), ca.apgr(), cb.apgr()])

        n = len(ys)
        full = point(np.arange(n))
        boot = np.array([point(rng.integers(0, n, n)) for _ in range(args.bootstrap)])
        diff_share, diff_apgr = boot[:, 1] - boot[:, 0], boot[:, 3] - boot[:, 2]
        out[d] = {
            "n": int(n),
            "share_at_95": {"a": full[0], "b": full[1], "b_minus_a": full[1] - full[0]},
            "share_at_95_diff_ci": [float(x) for x in np.percentile(diff_share, [2.5, 97.5])],
            "apgr": {"a": full[2], "b": full[3], "b_minus_a": full[3] - full[2]},
            "apgr_diff_ci": [float(x) for x in np.percentile(diff_apgr, [2.5, 97.5])],
        }
        log.info("%s: %s", d, out[d])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float), encoding="utf-8")
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()

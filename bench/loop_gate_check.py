"""Offline check of the loop's training + gate on the demo's data, without Kafka, MLflow or serving.

Trains the demo's initial router (``professional_law`` excluded) and a challenger that also sees
simulated live outcomes of law (70% of the law training prompts answered by GPT-4 with its
recorded grade, 30% by Mixtral, wrong: the demo's drift), both with the loop's settings, then
evaluates both on the same held-out rows and prints the gate's checks and the stable tasks'
quality and cost. It is what the demo's first retrain does, minus distillation and timing.

    python bench/loop_gate_check.py --seed 0
    python bench/loop_gate_check.py --seed 1 --confidence 0.95   # thresholds on a confidence bound

Data: ``SWITCHYARD_DATA_DIR`` (default ../shared/data); embeddings are cached under
``$SWITCHYARD_STATE_DIR/cache/embeddings`` (the first run embeds ~3,000 prompts).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.catalog import load_catalog  # noqa: E402
from services.router.artifact import load_local  # noqa: E402
from services.router.encoder import EncoderConfig  # noqa: E402
from training.collect import apply_fresh, holdout_mask, load_bootstrap, training_rows  # noqa: E402
from training.data import GPT4, LABEL, MIXTRAL  # noqa: E402
from training.embeddings import EmbeddingCache, LazyEncoder  # noqa: E402
from training.evaluation.compare import evaluate_router  # noqa: E402
from training.evaluation.gate import gate  # noqa: E402
from training.loop.run import warm_start_params  # noqa: E402
from training.settings import TrainSettings  # noqa: E402
from training.train import TrainConfig, TrainingSet, task_vocab, train_router  # noqa: E402

NEW_TASK = "professional_law"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="training seed of both routers")
    ap.add_argument("--confidence", type=float, default=0.0, help="TrainConfig.threshold_confidence")
    ap.add_argument("--max-rows", type=int, default=400, help="training rows per dataset (the demo's)")
    ap.add_argument("--holdout-rows", type=int, default=None, help="extra held-out rows per dataset")
    ap.add_argument(
        "--challenger-seed", type=int, default=None, help="train the challenger with another seed"
    )
    ap.add_argument("--ensemble", type=int, default=None, help="mlp heads per router (default: the loop's)")
    ap.add_argument("--warm-start", action="store_true", help="challenger warm-started from the champion")
    ap.add_argument(
        "--no-outcomes", action="store_true", help="challenger without the law outcomes (noise floor)"
    )
    a = ap.parse_args()

    loop = TrainSettings()
    data = Path(
        os.environ.get("SWITCHYARD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    catalog = load_catalog(None)
    cache = EmbeddingCache(loop.cache_dir, LazyEncoder(EncoderConfig()))
    holdout_rows = loop.holdout_rows if a.holdout_rows is None else a.holdout_rows
    frame = load_bootstrap(
        data,
        list(loop.datasets),
        a.max_rows,
        [NEW_TASK],
        holdout_rows=holdout_rows,
        holdout_folds=loop.holdout_folds,
    )
    models = [
        c[len(LABEL) :] for c in frame.columns if c.startswith(LABEL) and c[len(LABEL) :] in catalog.model_ids
    ]
    hold = holdout_mask(frame, loop.holdout_folds)

    def training_set(f: pd.DataFrame) -> TrainingSet:
        f = f.reset_index(drop=True)
        emb = cache.embed(f["prompt"].tolist(), f["prompt_hash"].tolist())
        return TrainingSet(f, emb, f["task"].tolist(), f[[LABEL + m for m in models]].to_numpy(float), models)

    rng = np.random.default_rng(a.seed)
    law = frame[(frame["task"] == NEW_TASK).to_numpy() & ~hold]
    to_gpt4 = rng.random(len(law)) < 0.7
    fresh = pd.DataFrame(
        {
            "prompt_hash": law["prompt_hash"].to_numpy(),
            "prompt": law["prompt"].to_numpy(),
            "task": NEW_TASK,
            "model": np.where(to_gpt4, GPT4, MIXTRAL),
            "label": np.where(to_gpt4, law[LABEL + GPT4].to_numpy(), 0.0),
            "weight": 1,
            "source": "outcome",
        }
    )
    exclude = [NEW_TASK]
    full = {
        "champion": apply_fresh(frame, fresh.iloc[:0], models, exclude),
        "challenger": apply_fresh(frame, fresh.iloc[:0] if a.no_outcomes else fresh, models, exclude),
    }
    holdout = training_set(full["challenger"][hold])
    cfg = TrainConfig(
        kind=loop.kind,
        epochs=loop.epochs,
        calibration_folds=loop.calibration_folds,
        threshold_confidence=a.confidence,
        ensemble=a.ensemble if a.ensemble is not None else loop.ensemble,
        seed=a.seed,
    )
    ev = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, f in full.items():
            ts = training_set(training_rows(f, hold, models, exclude))
            out = Path(tmp) / name
            seed = a.challenger_seed if name == "challenger" and a.challenger_seed is not None else a.seed
            run_cfg = cfg.model_copy(update={"seed": seed})
            init = None
            if name == "challenger" and a.warm_start:
                init = warm_start_params(load_local(Path(tmp) / "champion"), task_vocab(ts.tasks), models)
            train_router(ts, run_cfg, catalog, out, encoder=EncoderConfig(), encoder_sha=None, init=init)
            ev[name] = evaluate_router(load_local(out), holdout, catalog, loop.quality_target)
    verdict = gate(ev["challenger"], ev["champion"], loop.gate_config(), [NEW_TASK])
    print(f"held-out rows {sum(m.n for m in ev['champion'].per_task.values())}; gate {verdict.summary()[:4]}")
    for c in verdict.checks:
        print(("  ok   " if c.passed else "  FAIL ") + c.detail)
    for name, e in ev.items():
        stable = {t: m for t, m in e.per_task.items() if t != NEW_TASK}
        n = sum(m.n for m in stable.values())
        q = sum(m.quality_ratio * m.n for m in stable.values()) / n
        c = sum(m.cost_ratio * m.n for m in stable.values()) / n
        print(
            f"{name}: stable tasks quality {q:.3f} of GPT-4's at cost ratio {c:.3f}; "
            f"{NEW_TASK} {e.per_task[NEW_TASK].quality_ratio:.3f} at {e.per_task[NEW_TASK].cost_ratio:.3f}"
        )


if __name__ == "__main__":
    main()

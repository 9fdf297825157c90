"""Scoring speed of a router artefact, end to end, with and without its cold-start calibration.

What the router's replicas run per query: the encoder, the head, the calibration (Platt per
model, per task or cold start) and the policy decision. The cold-start calibration adds a lookup
per row; the cascade scorer without the prompt embedding skips an encoder pass. Measured as
queries per CPU-second of this process (every thread), on distinct prompts, so no cache helps.

    .venv/bin/python bench/router_policy_speed.py --router DIR --out bench/results/router_policy_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from services.catalog import load_catalog
from services.router.artifact import load_router
from services.router.base import Query
from services.router.policy import RoutingPolicy
from training.data import GPT4, MIXTRAL, load_gsm8k, load_mmlu


def _cpu_per_query(fn, n: int) -> float:  # noqa: ANN001
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", required=True, help="Router artefact dir or models:/ ref.")
    ap.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("SWITCHYARD_DATA_DIR", "../shared/data"))
    )
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: no spin on shared cores)."
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/router_policy_speed.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    prompts = (
        load_mmlu(args.data_dir).frame["prompt"].drop_duplicates().sample(args.n, random_state=0).tolist()
    )
    router = load_router(args.router)
    router.cache_size = 0  # every prompt is encoded
    router.scores([Query(prompts[0], None)])  # load the encoder outside the timing
    catalog = load_catalog(None)
    cal = router.calibration
    # the same calibration without its cold-start part (as routers were before it existed)
    has_cold = "unknown_table" in type(cal).model_fields
    legacy = cal.model_copy(update={"unknown_table": None, "unknown_platt": {}}) if has_cold else cal
    policy_new, policy_old = RoutingPolicy(catalog, cal), RoutingPolicy(catalog, legacy)
    out: dict[str, object] = {"router": router.version, "n": args.n, "batch": args.batch}

    emb = router.embed(prompts)
    reps = 20

    def head_and_calibration(c) -> None:  # noqa: ANN001
        router.calibration = c
        for _ in range(reps):
            for i in range(0, len(prompts), args.batch):
                router.scores_from_embeddings(
                    emb[i : i + args.batch], ["default"] * len(emb[i : i + args.batch])
                )

    for name, c in (("cold_start", cal), ("global_only", legacy)):
        out[f"head_calibration_us_per_query_{name}"] = 1e6 * _cpu_per_query(
            lambda c=c: head_and_calibration(c), reps * len(prompts)
        )
    router.calibration = cal
    scores = [router.scores_from_embeddings(emb[i : i + 1], ["default"])[0] for i in range(len(prompts))]
    rows = [{m: float(p) for m, p in zip(router.models, s, strict=True)} for s in scores]
    for name, pol in (("cold_start", policy_new), ("global_only", policy_old)):
        out[f"decide_us_per_query_{name}"] = 1e6 * _cpu_per_query(
            lambda pol=pol: [pol.decide(r, "default", 0.95, None, [GPT4, MIXTRAL]) for r in rows], len(rows)
        )

    def end_to_end() -> None:
        for i in range(0, len(prompts), args.batch):
            part = prompts[i : i + args.batch]
            for s in router.scores([Query(p, "default") for p in part]):
                policy_new.decide(s, "default", 0.95, None, [GPT4, MIXTRAL])

    per = _cpu_per_query(end_to_end, len(prompts))
    out["end_to_end_cpu_ms_per_query"] = 1e3 * per
    out["end_to_end_queries_per_cpu_second"] = 1.0 / per
    if router.cascade is not None:
        g = load_gsm8k(args.data_dir).frame.head(200)
        answers = g["response:" + MIXTRAL].tolist()
        qs = g["prompt"].tolist()
        per_c = _cpu_per_query(lambda: router.answer_scores(qs, answers, MIXTRAL), len(qs))
        out["cascade_uses_embedding"] = router.cascade.use_embedding
        out["cascade_cpu_ms_per_answer"] = 1e3 * per_c
    out["torch_threads"] = torch.get_num_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

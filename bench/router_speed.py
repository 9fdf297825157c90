"""Router scoring speed on this machine, and the accuracy cost of each speed-up.

Variants (``[backend:]tokens:dtype``, e.g. ``128:fp32`` or ``onnx:64:int8``): the encoder backend
(torch or ONNX Runtime), truncation (tokens kept, head + tail), int8 dynamic quantisation (CPU).
The static backend (MiniLM distilled by model2vec) is ``static:tokens:pcaN`` (``pca0``: all 384
dimensions; tokens 0: no truncation), e.g. ``static:128:pca256``.
For each: one-query latency (p50/p95 over real prompts, one at a time) and batched throughput;
and the accuracy cost at serving time: the production head (trained on fp32 / 128-token
embeddings of the other folds) scores one held-out MMLU sample with the variant's embeddings:
APGR and GPT-4 share @95% on that sample, and how often the routing decision at the 95%
operating point differs from fp32/128.

    nice -n 10 .venv/bin/python bench/router_speed.py --out reports/router/speed.json
    # CPU cost only (no accuracy sample, no torch fp32 embeddings needed): static vs onnx int8
    .venv/bin/python bench/router_speed.py --speed-only --parallel 0 \
        --variants onnx:128:int8,static:128:pca256 --out reports/router/speed-static.json

Single-query CPU time is the process's CPU time per call (every thread), the machine-independent
figure on shared cores. ``--parallel 2`` also runs each variant in 2 worker processes at once (one
intra-op thread each, the 2-replica layout) and reports the combined wall-clock queries/s;
ONNX variants are also timed with 2 intra-op threads in one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from services.router.encoder import Encoder, EncoderConfig
from services.router.heads import features, make_head, sigmoid
from training.data import GPT4, MIXTRAL, load_all
from training.embeddings import EmbeddingCache
from training.evaluation.metrics import two_tier_curve
from training.splits import kfold
from training.train import TrainConfig, fit_head, task_vocab

log = logging.getLogger("router_speed")


def _single(fn, prompts: list[str]) -> dict[str, float]:  # noqa: ANN001
    """Wall and CPU (this thread; torch runs one intra-op thread here) milliseconds per call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn(prompts[:4])  # warm-up
        wall, cpu = [], []
        for p in prompts[4:]:
            t0, c0 = time.perf_counter(), time.process_time()
            fn([p])
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
    finally:
        torch.set_num_threads(threads)
    wall.sort()
    return {
        "p50_ms": statistics.median(wall),
        "p95_ms": wall[int(0.95 * (len(wall) - 1))],
        "p50_cpu_ms": statistics.median(cpu),
        "mean_cpu_ms": statistics.fmean(cpu),
    }


def parse_variant(spec: str) -> EncoderConfig:
    """``[backend:]tokens:dtype`` → an encoder config (backend defaults to torch); for the static
    backend the last part is ``pcaN`` (its PCA dimensions, 0: none)."""
    parts = spec.split(":")
    backend = parts[0] if len(parts) == 3 else "torch"
    length, dtype = parts[-2], parts[-1]
    if backend == "static":
        if not dtype.startswith("pca"):
            raise ValueError(f"static variant {spec!r}: expected static:TOKENS:pcaN")
        return EncoderConfig(max_length=int(length), backend="static", static_pca_dims=int(dtype[3:]))
    return EncoderConfig(max_length=int(length), quantize_int8=dtype == "int8", backend=backend)


_WORKER: dict[str, Encoder] = {}


def _worker_init(cfg: EncoderConfig) -> None:
    torch.set_num_threads(1)
    _WORKER["enc"] = Encoder(cfg, device="cpu", threads=1)
    _WORKER["enc"].encode(["warm up"])


def _worker_run(args: tuple[list[str], int]) -> tuple[int, float]:
    prompts, batch = args
    c0 = time.process_time()
    for i in range(0, len(prompts), batch):
        _WORKER["enc"].encode(prompts[i : i + batch])
    return len(prompts), time.process_time() - c0


def parallel(cfg: EncoderConfig, prompts: list[str], batch: int, procs: int) -> dict[str, float]:
    """``procs`` worker processes (one intra-op thread each) splitting ``prompts``: wall q/s."""
    with ProcessPoolExecutor(procs, initializer=_worker_init, initargs=(cfg,)) as ex:
        list(ex.map(_worker_run, [(["warm up"], 1)] * procs))  # every worker is up before timing
        chunks = [(prompts[i::procs], batch) for i in range(procs)]
        t0 = time.perf_counter()
        done = list(ex.map(_worker_run, chunks))
        wall = time.perf_counter() - t0
    n, cpu = sum(d[0] for d in done), sum(d[1] for d in done)
    return {f"parallel{procs}_qps": n / wall, f"parallel{procs}_q_per_cpu_s": n / cpu}


def _batched(fn, prompts: list[str], batch: int) -> dict[str, float]:  # noqa: ANN001
    """Queries per second: by the wall clock, and per CPU-second used (all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(prompts), batch):
        fn(prompts[i : i + batch])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"batched_qps": len(prompts) / wall, "batched_q_per_cpu_s": len(prompts) / cpu}


def latency(enc: Encoder, prompts: list[str], n: int) -> dict[str, float]:
    return _single(enc.encode, prompts[: n + 4])


def throughput(enc: Encoder, prompts: list[str], batch: int) -> dict[str, float]:
    return _batched(enc.encode, prompts, batch)


def full_path(
    ref: str, lat_prompts: list[str], thr_prompts: list[str], args: argparse.Namespace
) -> list[dict]:
    """``LoadedRouter.scores`` end to end (encoder + head + calibration), as the artefact's manifest
    says (``manifest``) and with encoder overrides (``backend:dtype``)."""
    from services.router.artifact import load_router
    from services.router.base import Query

    out = []
    for spec in args.router_variants.split(","):
        kw: dict[str, object] = {}
        if spec != "manifest":
            backend, dtype = spec.split(":")
            kw = {"backend": backend, "quantize_int8": dtype == "int8"}
        router = load_router(ref, device="cpu", **kw)
        router.cache_size = 0  # measure the model, not the LRU

        def fn(ps: list[str], router=router) -> object:  # noqa: ANN001
            return router.scores([Query(p, None) for p in ps])

        row = {
            "router": router.version,
            "encoder": spec,
            "encoder_config": router.encoder_config.to_dict(),
            "load_avg_1m": os.getloadavg()[0],
            **_single(fn, lat_prompts[: args.latency_n + 4]),
            **_batched(fn, thr_prompts, args.batch),
        }
        log.info("%s", row)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("SWITCHYARD_DATA_DIR", "../shared/data"))
    )
    ap.add_argument("--state-dir", type=Path, default=Path(os.environ.get("SWITCHYARD_STATE_DIR", ".state")))
    ap.add_argument("--latency-n", type=int, default=60)
    ap.add_argument("--throughput-n", type=int, default=512)
    ap.add_argument("--accuracy-n", type=int, default=800)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--variants",
        default="128:fp32,onnx:128:fp32,onnx:128:int8,onnx:96:int8,onnx:64:int8",
        help="Comma-separated [backend:]tokens:dtype, e.g. 128:fp32,onnx:64:int8.",
    )
    ap.add_argument("--parallel", type=int, default=2, help="Worker processes for the wall q/s (0: skip).")
    ap.add_argument("--out", type=Path, default=Path("reports/router/speed.json"))
    ap.add_argument(
        "--router", default=None, help="Also time LoadedRouter.scores of this artefact (dir or URI)."
    )
    ap.add_argument("--only-router", action="store_true", help="Skip the encoder variants.")
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="Time the variants only: no accuracy sample (needs no torch fp32 embedding cache).",
    )
    ap.add_argument(
        "--router-variants",
        default="manifest,torch:fp32,onnx:int8",
        help="With --router: 'manifest' (as trained) and/or backend:dtype overrides.",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)  # one intra-op thread per process (per replica), for every backend
    # numpy's BLAS too: the heads' matmuls would otherwise spread over every core (OpenBLAS threads
    # spin), which cost the static router ~2x its CPU per batched query here
    threadpool_limits(1)

    bench = load_all(args.data_dir)
    f = bench.frame
    rng = np.random.default_rng(0)
    sample = rng.permutation(len(f))
    prompts_all = f["prompt"].tolist()
    lat_prompts = [prompts_all[i] for i in sample[: args.latency_n + 4]]
    thr_prompts = [prompts_all[i] for i in sample[: args.throughput_n]]

    results = {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "uname": " ".join(os.uname()),
        "variants": [],
    }
    route_eval = None
    if not args.speed_only:
        route_eval, test_prompts, emb_test, base_gain, cut = _accuracy_setup(args, bench, rng, results)
    for spec in [] if args.only_router else args.variants.split(","):
        cfg = parse_variant(spec)
        enc = Encoder(cfg, device="cpu", threads=1, static_cache_dir=args.state_dir / "cache" / "static")
        row: dict[str, object] = {
            "variant": spec,
            "load_avg_1m": os.getloadavg()[0],
            **latency(enc, lat_prompts, args.latency_n),
            **throughput(enc, thr_prompts, args.batch),
        }
        if cfg.backend == "onnx":
            enc2 = Encoder(cfg, device="cpu", threads=2)
            two = _batched(enc2.encode, thr_prompts, args.batch)
            row["threads2_qps"] = two["batched_qps"]
            row["threads2_q_per_cpu_s"] = two["batched_q_per_cpu_s"]
            del enc2
        if args.parallel > 1:
            row.update(parallel(cfg, thr_prompts, args.batch, args.parallel))
        if route_eval is not None and cfg.backend != "static":  # a static space needs its own head
            e = enc.encode(test_prompts)
            m, gain = route_eval(e)
            row.update({f"{k}": v for k, v in m.items()})
            row["decision_agreement_at_95"] = float(((gain >= cut) == (base_gain >= cut)).mean())
            row["cosine_to_fp32_128"] = float(np.mean(np.sum(e * emb_test, axis=1)))
        log.info("%s", row)
        results["variants"].append(row)
    if args.router:
        results["router_path"] = full_path(args.router, lat_prompts, thr_prompts, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(json.dumps(results, indent=1))


def _accuracy_setup(args: argparse.Namespace, bench, rng, results: dict):  # noqa: ANN001, ANN202
    """The accuracy sample: fold 0 of MMLU held out; a head trained on the cached fp32/128
    embeddings of the rest. Returns (route_eval, test prompts, their fp32 vectors, the fp32
    gains, the 95% operating cut)."""
    f = bench.frame
    prompts_all = f["prompt"].tolist()
    base_cfg = EncoderConfig(max_length=128)
    base_enc = Encoder(base_cfg, device="cpu")
    cache = EmbeddingCache(args.state_dir / "cache" / "embeddings", base_enc)
    emb = cache.embed(prompts_all, f["prompt_hash"].tolist())
    folds = kfold(f["prompt_hash"], 5)
    models = [GPT4, MIXTRAL]
    labels = bench.labels(models).to_numpy(float)
    mmlu = (f["dataset"] == "mmlu").to_numpy()
    test_pool = np.flatnonzero(mmlu & (folds == 0))
    test = np.sort(rng.choice(test_pool, size=min(args.accuracy_n, len(test_pool)), replace=False))
    train = folds != 0
    vocab = task_vocab(f["task"].tolist())
    tasks = f["task"].tolist()
    x = features(emb, tasks, vocab)
    params, opts = fit_head("mlp", emb[train], x[train], labels[train], TrainConfig(kind="mlp"))
    head = make_head("mlp", params, opts)
    test_prompts = [prompts_all[i] for i in test]
    test_tasks = [tasks[i] for i in test]
    ys, yw = labels[test, 0], labels[test, 1]

    def route_eval(e: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        p = sigmoid(head.logits(features(e, test_tasks, vocab)))
        gain = p[:, 0] - p[:, 1]
        c = two_tier_curve(gain, ys, yw)
        return {"apgr": c.apgr(), "share_at_95": c.share_at(0.95)}, gain

    base_metrics, base_gain = route_eval(emb[test])
    cut = np.quantile(base_gain, 1 - base_metrics["share_at_95"])
    results["accuracy_sample"] = int(len(test))
    results["reference"] = {"variant": "128:fp32 (cached)", **base_metrics}
    return route_eval, test_prompts, emb[test], base_gain, cut


if __name__ == "__main__":
    main()

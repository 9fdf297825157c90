"""Batched encoder throughput with ONE intra-op thread (per core), by truncation and int8.

On shared, oversubscribed cores two OpenMP threads spin and waste CPU; one thread per process
(scale by Ray replicas, one per core) is the efficient layout. Prints queries per wall second and
per CPU second for 256 random benchmark prompts.

    nice -n 5 .venv/bin/python bench/router_throughput.py
"""

from __future__ import annotations

import os
import time

import torch

from services.router.encoder import Encoder, EncoderConfig
from training.data import load_all


def main() -> None:
    f = load_all(os.environ.get("SWITCHYARD_DATA_DIR", "../shared/data")).frame
    ps = f.prompt.sample(256, random_state=1).tolist()
    torch.set_num_threads(1)
    for length, int8 in [(128, False), (64, True), (32, True)]:
        enc = Encoder(EncoderConfig(max_length=length, quantize_int8=int8), device="cpu")
        enc.encode(ps[:8])
        for bs in (16, 64):
            t0, c0 = time.perf_counter(), time.process_time()
            enc.encode(ps, batch_size=bs)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(
                f"{length} tokens int8={int8} batch={bs}: {len(ps) / wall:.1f} q/s wall, "
                f"{len(ps) / cpu:.1f} q per CPU-second",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Closed-loop measurement: a new task the router never saw, repaired by one retrain request.

1. start an emulator subprocess (the strong model and the judge for distillation);
2. ``switchyard train run --no-kafka`` with ``--task`` excluded → the initial champion;
3. publish ``--n`` of the task's prompts as streams would (outcomes of the cheap model with its
   real grade, and hard queries), on fresh topics (unique prefix);
4. ``switchyard train request`` + ``switchyard train worker --max-runs 1`` → distil, retrain,
   gate, promote; prints the gate's comparison and the timings.

    nice -n 10 .venv/bin/python bench/loop_newtask.py --task professional_law --n 150 --max-rows 1000

Uses a fresh registered model name and the running MLflow/Kafka (``make up``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "switchyard")


async def publish(bootstrap: str, prefix: str, data_dir: Path, task: str, n: int) -> int:
    """Outcomes (cheap model, real grade) and hard queries of ``n`` prompts of ``task``."""
    from aiokafka import AIOKafkaProducer

    from services.contracts import HardQueryEvent, HardQueryReason, OutcomeEvent
    from services.contracts.topic_admin import apply_topics
    from services.contracts.topics import HARD_QUERIES, OUTCOMES, topic_name
    from training.data import MIXTRAL, load_mmlu

    await apply_topics(bootstrap, prefix)
    f = load_mmlu(data_dir).frame
    rows = f[f["task"] == task].sample(n=n, random_state=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for _, r in rows.iterrows():
            y = float(r["label:" + MIXTRAL])
            rid = uuid.uuid4().hex
            oc = OutcomeEvent(
                request_id=rid,
                task=task,
                prompt_hash=r["prompt_hash"],
                prompt=r["prompt"],
                chosen_model=MIXTRAL,
                tier="budget",
                mode="route",
                score=y,
                accepted=y >= 0.5,
            )
            reason = HardQueryReason.NEGATIVE_FEEDBACK if y < 0.5 else HardQueryReason.LOW_MARGIN
            hq = HardQueryEvent(
                request_id=rid,
                task=task,
                prompt_hash=r["prompt_hash"],
                prompt=r["prompt"],
                reason=reason,
                chosen_model=MIXTRAL,
                feedback_score=y,
            )
            await producer.send(topic_name(OUTCOMES, prefix), oc.to_bytes(), key=task.encode())
            await producer.send(topic_name(HARD_QUERIES, prefix), hq.to_bytes(), key=task.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return len(rows)


def main() -> None:
    from infra.emulator.testing import run_emulator
    from services.contracts.settings import KafkaSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="professional_law")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--max-rows", type=int, default=1000)
    ap.add_argument("--budget-usd", type=float, default=2.0)
    ap.add_argument("--budget-calls", type=int, default=240)
    ap.add_argument("--max-queries", type=int, default=60)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    a = ap.parse_args()
    tag = uuid.uuid4().hex[:8]
    prefix = f"loopbench-{tag}."
    tmp = Path(tempfile.mkdtemp(prefix="loop-bench-"))
    with run_emulator(data_dir=a.data_dir, datasets=["mmlu"]) as emu:
        cat = yaml.safe_load((ROOT / "services" / "catalog.yaml").read_text())
        for p in cat["providers"]:
            p["base_url"] = emu.openai_base_url if p["kind"] == "openai" else emu.base_url
        (tmp / "catalog.yaml").write_text(yaml.safe_dump(cat))
        env = {
            **os.environ,
            "SWITCHYARD_MLFLOW_REGISTERED_MODEL": f"switchyard-loop-bench-{tag}",
            "SWITCHYARD_MLFLOW_EXPERIMENT": "switchyard-loop-bench",
            "SWITCHYARD_DATA_DIR": str(a.data_dir),
            "SWITCHYARD_TRAIN_EXCLUDE_TASKS": json.dumps([a.task]),
            "SWITCHYARD_TRAIN_MAX_ROWS": str(a.max_rows),
            "SWITCHYARD_TRAIN_BUDGET_USD": str(a.budget_usd),
            "SWITCHYARD_TRAIN_BUDGET_CALLS": str(a.budget_calls),
            "SWITCHYARD_TRAIN_MAX_QUERIES": str(a.max_queries),
            "SWITCHYARD_TRAIN_CATALOG": str(tmp / "catalog.yaml"),
            "SWITCHYARD_KAFKA_TOPIC_PREFIX": prefix,
        }
        t0 = time.perf_counter()
        init = subprocess.run(
            [CLI, "train", "run", "--reason", f"initial router without {a.task}", "--no-kafka"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        t_init = time.perf_counter() - t0
        if init.returncode != 0:
            sys.exit(f"initial run failed:\n{init.stdout[-3000:]}\n{init.stderr[-3000:]}")
        n = asyncio.run(publish(KafkaSettings().bootstrap, prefix, a.data_dir, a.task, a.n))
        t1 = time.perf_counter()
        subprocess.run(
            [CLI, "train", "request", "--reason", f"quality drift on task {a.task}", "--tasks", a.task],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        loop = subprocess.run(
            [CLI, "train", "worker", "--max-runs", "1", "--idle-exit-s", "120"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        t_loop = time.perf_counter() - t1
    out = loop.stdout
    run = json.loads(out[out.index("{") :])
    gate = json.loads((ROOT / ".state" / "loop" / "runs" / run["run_id"] / "gate.json").read_text())
    result = {
        "task": a.task,
        "published": n,
        "initial_run_s": round(t_init, 1),
        "request_to_done_s": round(t_loop, 1),
        "run": run,
        "checks": [c["detail"] for c in gate["verdict"]["checks"]],
    }
    for who in ("champion", "challenger"):
        e = gate[who]
        result[who] = {
            "overall": e["overall"],
            a.task: e["per_task"].get(a.task),
            "apgr": e["apgr"],
            "ece": e["ece"],
        }
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

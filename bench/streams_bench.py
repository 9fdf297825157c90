"""Streams benchmark: detection delay, false alarms (real benchmark labels) and worker throughput.

    python bench/streams_bench.py detect      # delay for a 15-point drop, false alarms on 100k events
    python bench/streams_bench.py throughput  # events/s one worker sustains on the real broker
    python bench/streams_bench.py reference -o .state/reference.json   # per task/model acceptance

Streams are simulated from the real graded answers in SWITCHYARD_DATA_DIR: every labelled event
of a task resamples a real prompt of that task; the task's cheap model answers it with
probability ``--cheap-share`` (else the strong model) and the event is accepted when that model's
real answer was graded correct. A drift makes the cheap model's correct answers wrong with
probability ``drop / p_cheap``: its acceptance on that task falls by ``drop`` points.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.catalog import load_catalog  # noqa: E402
from services.contracts import OutcomeEvent  # noqa: E402
from services.contracts.settings import DataSettings  # noqa: E402
from streams.drift import TaskMonitor  # noqa: E402
from streams.settings import StreamsSettings  # noqa: E402

log = logging.getLogger("streams_bench")


def _data_dir() -> Path:
    d = DataSettings().data_dir
    d = d if d.is_absolute() else ROOT / d
    return d if (d / "routellm").exists() else ROOT.parent / "shared" / "data"


class TaskPool:
    """Per task: the real labels of its cheap and strong model, and their acceptance rates."""

    def __init__(self, data_dir: Path) -> None:
        from training.data import load_all

        bench = load_all(data_dir)
        catalog = load_catalog(None)
        budget = [m.id for m in catalog.models if m.tier == catalog.tiers[0]]
        labels = bench.labels()
        self.tasks: dict[str, dict] = {}
        self.reference: dict[str, dict[str, float]] = {}
        for task, idx in bench.frame.groupby("task").groups.items():
            lab = labels.loc[idx]
            graded = [m for m in lab.columns if lab[m].notna().all()]
            cheap = sorted((m for m in graded if m in budget), key=catalog.blended_price)
            if not cheap or catalog.strong_model not in graded:
                continue
            c, s = cheap[0], catalog.strong_model
            yes_c, yes_s = lab[c].to_numpy() >= 0.5, lab[s].to_numpy() >= 0.5
            prompts = bench.frame.loc[idx, "prompt"].str.len().to_numpy(float)
            self.tasks[task] = {
                "cheap": c,
                "strong": s,
                "yes_c": yes_c,
                "yes_s": yes_s,
                "chars": prompts,
                "p_c": float(yes_c.mean()),
                "p_s": float(yes_s.mean()),
                "rows": len(idx),
            }
            self.reference[task] = {m: float((lab[m].to_numpy() >= 0.5).mean()) for m in graded}

    def draw(
        self, task: str, n: int, share: float, rng: np.random.Generator, drop: float = 0.0
    ) -> list[OutcomeEvent]:
        """``n`` labelled events of ``task`` (``drop``: the cheap model's acceptance falls by it)."""
        t = self.tasks[task]
        rows = rng.integers(0, t["rows"], n)
        cheap = rng.random(n) < share
        acc = np.where(cheap, t["yes_c"][rows], t["yes_s"][rows])
        if drop:
            flip = cheap & acc & (rng.random(n) < drop / t["p_c"])
            acc = acc & ~flip
        now = datetime.now(UTC)
        out = []
        for i in range(n):
            model = t["cheap"] if cheap[i] else t["strong"]
            out.append(
                OutcomeEvent.model_construct(
                    request_id=uuid.uuid4().hex,
                    ts=now,
                    task=task,
                    tenant="default",
                    prompt_hash="0" * 16,
                    prompt=None,
                    chosen_model=model,
                    tier="budget" if cheap[i] else "frontier",
                    mode="route",
                    router_version="bench",
                    predicted=t["p_c"] if cheap[i] else t["p_s"],
                    score=float(acc[i]),
                    accepted=bool(acc[i]),
                    escalated=False,
                    cost_usd=0.0,
                    latency_ms=0.0,
                    feedback_source="judge",
                    schema_version=1,
                )
            )
        return out

    def features(self, task: str, n: int, rng: np.random.Generator) -> list[dict]:
        t = self.tasks[task]
        rows = rng.integers(0, t["rows"], n)
        return [
            {
                "chosen_score": t["p_c"],
                "top_score": t["p_s"],
                "margin": t["p_s"] - t["p_c"],
                "score_mean": (t["p_c"] + t["p_s"]) / 2,
                "prompt_chars": float(t["chars"][r]),
                "prompt_tokens": None,
            }
            for r in rows
        ]


LEARNED = False  # --reference learned: the detectors learn each (task, model) reference live


def _monitor(pool: TaskPool, tmp: Path) -> TaskMonitor:
    ref = {} if LEARNED else pool.reference
    return TaskMonitor(StreamsSettings(state_dir=tmp), {}, {}, reference=ref, write_reports=False)


def false_alarms(pool: TaskPool, events: int, share: float, seed: int, batch: int) -> dict:
    """Feed ``events`` stable labelled events (tasks weighted by their size) through every detector."""
    rng = np.random.default_rng(seed)
    tasks = sorted(pool.tasks)
    weights = np.array([pool.tasks[t]["rows"] for t in tasks], float)
    per_task = rng.multinomial(events, weights / weights.sum())
    fired: list[dict] = []
    checks = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mon = _monitor(pool, Path(tmp))
        for task, n in zip(tasks, per_task, strict=True):
            for k in range(0, int(n), batch):
                m = min(batch, int(n) - k)
                res = mon.on_outcomes(task, pool.draw(task, m, share, rng))
                if mon.add_features(task, pool.features(task, m, rng)):
                    res.alerts += mon.check_input(task).alerts
                    checks += 1
                fired += [
                    {"task": a.task, "detector": a.detector, "subject": a.evidence.get("subject")}
                    for a in res.alerts
                    if a.status.value == "firing"
                ]
    return {
        "events": int(per_task.sum()),
        "tasks": len(tasks),
        "cheap_share": share,
        "false_alarms": len(fired),
        "alerts": fired,
        "evidently_checks": checks,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def detection_delay(
    pool: TaskPool,
    drop: float,
    share: float,
    trials: int,
    prefix: int,
    seed: int,
    batch: int,
    max_events: int = 3000,
) -> dict:
    """Labelled task events after the change until the quality alert on the cheap model fires."""
    rng = np.random.default_rng(seed)
    delays, missed, skipped = [], 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for task in sorted(pool.tasks):
            if pool.tasks[task]["p_c"] < drop + 0.05:
                skipped.append(task)  # acceptance cannot drop that far
                continue
            for _ in range(trials):
                mon = _monitor(pool, Path(tmp))
                for k in range(0, prefix, batch):
                    mon.on_outcomes(task, pool.draw(task, min(batch, prefix - k), share, rng))
                seen, delay = 0, None
                drifted = pool.draw(task, max_events, share, rng, drop=drop)
                while seen < max_events and delay is None:
                    chunk = drifted[seen : seen + batch]
                    saved = copy.deepcopy((dict(mon.state), dict(mon.tracker.store)))
                    if not _fired(mon.on_outcomes(task, chunk)):
                        seen += len(chunk)
                        continue
                    # it fired in this batch: replay it one event at a time for the exact delay
                    mon.state.clear(), mon.state.update(saved[0])
                    mon.tracker.store.clear(), mon.tracker.store.update(saved[1])
                    for k, o in enumerate(chunk):
                        if _fired(mon.on_outcomes(task, [o])):
                            delay = seen + k + 1
                            break
                if delay is None:
                    missed += 1
                else:
                    delays.append(delay)
    d = np.array(delays, float)
    return {
        "drop_points": round(drop * 100),
        "cheap_share": share,
        "trials": len(delays) + missed,
        "missed": missed,
        "tasks": len(pool.tasks) - len(skipped),
        "skipped_tasks": skipped,
        "median": float(np.median(d)),
        "mean": round(float(d.mean()), 1),
        "p90": float(np.percentile(d, 90)),
        "max": float(d.max()),
        "within_300": round(float((d <= 300).sum()) / (len(delays) + missed), 3),  # a miss is not within
    }


def _fired(res) -> bool:
    return any(a.status.value == "firing" and a.detector == "quality" for a in res.alerts)


def detect(args: argparse.Namespace) -> dict:
    global LEARNED
    LEARNED = args.reference == "learned"
    pool = TaskPool(_data_dir())
    if args.task:
        unknown = set(args.task) - set(pool.tasks)
        if unknown:
            raise SystemExit(f"unknown tasks: {sorted(unknown)}")
        pool.tasks = {t: pool.tasks[t] for t in args.task}
    out = {
        "reference": args.reference,
        "prefix": args.prefix,
        "threshold": StreamsSettings().quality.threshold,
        "resolve_threshold": StreamsSettings().quality.resolve_threshold,
    }
    if not args.skip_false_alarms:
        runs = [
            false_alarms(pool, args.events, args.cheap_share, args.seed + k, args.batch)
            for k in range(args.fa_seeds)
        ]
        out["false_alarms"] = (
            runs[0]
            if len(runs) == 1
            else {
                "seeds": [args.seed, args.seed + args.fa_seeds - 1],
                "events": sum(r["events"] for r in runs),
                "false_alarms": sum(r["false_alarms"] for r in runs),
                "alerts": [a for r in runs for a in r["alerts"]],
                "evidently_checks": sum(r["evidently_checks"] for r in runs),
                "seconds": round(sum(r["seconds"] for r in runs), 1),
            }
        )
    out["delay"] = [
        detection_delay(pool, args.drop, s, args.trials, args.prefix, args.seed + 1, args.batch)
        for s in sorted({1.0, args.cheap_share}, reverse=True)
    ]
    return out


async def _throughput(args: argparse.Namespace) -> dict:
    import httpx

    from services.contracts import CallEvent, FeedbackEvent
    from services.contracts.topic_admin import apply_topics
    from services.contracts.topics import CALLS, FEEDBACK, topic_name
    from streams.testing import Worker, free_port, produce, worker_env

    pool = TaskPool(_data_dir())
    rng = np.random.default_rng(args.seed)
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    await apply_topics(args.bootstrap, prefix)
    tasks = sorted(pool.tasks)
    records = []
    for i in range(args.requests):
        task = tasks[i % len(tasks)]
        t = pool.tasks[task]
        rid = uuid.uuid4().hex
        cheap = rng.random() < args.cheap_share
        model = t["cheap"] if cheap else t["strong"]
        call = CallEvent(
            request_id=rid,
            task=task,
            prompt_hash=rid + "0" * 32,
            requested_model="switchyard/auto",
            mode="route",
            router_version="bench",
            scores={t["cheap"]: t["p_c"], t["strong"]: t["p_s"]},
            chosen_model=model,
            cost_usd=1e-4,
            latency_ms=float(rng.integers(50, 2000)),
        )
        ok = bool(rng.random() < (t["p_c"] if cheap else t["p_s"]))
        records.append((topic_name(CALLS, prefix), rid.encode(), call.to_bytes()))
        records.append(
            (
                topic_name(FEEDBACK, prefix),
                rid.encode(),
                FeedbackEvent(request_id=rid, score=float(ok), source="judge").to_bytes(),
            )
        )
    speed_before = _machine_ms()
    t0 = time.perf_counter()
    await produce(args.bootstrap, records)
    produced_s = time.perf_counter() - t0
    state = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    port = free_port()
    worker = Worker(
        worker_env(args.bootstrap, prefix, state, port, batch_size=str(args.batch_size)),
        state / "worker.log",
        port,
    )
    spy = None
    try:
        worker.start()
        if args.profile:  # sample the worker while it works (py-spy, collapsed stacks per line)
            import subprocess

            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(worker.proc.pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(args.profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        t_ready = time.perf_counter()
        steal0 = _steal_seconds()
        done_at, samples = None, []
        deadline = t_ready + args.timeout
        async with httpx.AsyncClient(timeout=5) as client:
            while time.perf_counter() < deadline:
                progress = (await client.get(worker.base_url + "/progress/")).json()
                n = progress["events"]
                # (seconds, outcomes in the tables, worker CPU s, warm, join inputs)
                samples.append(
                    (
                        time.perf_counter() - t_ready,
                        n,
                        _cpu_seconds(worker.proc.pid),
                        progress["warm"],
                        progress["join_inputs"],
                    )
                )
                event_loop = progress.get("event_loop")
                if n >= args.requests:
                    done_at = time.perf_counter()
                    steal = _steal_seconds() - steal0
                    break
                await asyncio.sleep(0.25)
            metrics = (await client.get(worker.base_url + "/metrics")).text
    finally:
        if spy is not None:
            import signal

            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        worker.stop()
    if done_at is None:
        raise SystemExit(f"worker did not finish {args.requests} requests in {args.timeout}s: {samples[-3:]}")
    # The clock starts at the join's first progress (Faust's startup and rebalancing are not
    # throughput; the worker imports evidently before it joins the group) and stops when every
    # request is in the task tables. Events: the input records the join consumed in that window.
    end = done_at - t_ready
    start, start_j, cpu0 = next((t, j, c) for t, n, c, _, j in samples if j > 0)
    elapsed, events, cpu = end - start, 2 * args.requests - start_j, samples[-1][2] - cpu0
    shutil.rmtree(state, ignore_errors=True)
    dl = [ln for ln in metrics.splitlines() if ln.startswith("switchyard_streams_dead_letters_total")]
    alerts = [ln for ln in metrics.splitlines() if ln.startswith("switchyard_streams_alerts_total")]
    notices = [ln for ln in metrics.splitlines() if ln.startswith("switchyard_streams_notices_total")]
    return {
        "requests": args.requests,
        "input_events": 2 * args.requests,
        "produce_seconds": round(produced_s, 1),
        "measured_events": events,
        "seconds": round(elapsed, 2),
        "events_per_second": round(events / elapsed),
        "outcomes_per_second": round(events / 2 / elapsed),
        "worker_cpu_seconds": round(cpu, 2),
        "events_per_worker_cpu_second": round(events / cpu),
        "worker_cpu_share": round(cpu / elapsed, 2),
        "warm_at_start": samples[0][3],
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_steal_share": round(steal / (done_at - t_ready) / (os.cpu_count() or 1), 3),
        "machine_ms_before_after": [speed_before, _machine_ms()],
        "all_detectors": True,
        "event_loop": event_loop,
        "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SWITCHYARD_STREAMS_")},
        "dead_letters": dl,
        "alerts": alerts,
        "notices": notices,
    }


def _machine_ms() -> float:
    """CPU ms of a fixed pure-Python loop: how fast this (shared, virtual) core is right now.
    Single-core speed here moves by 10-30 % from minute to minute; events per CPU-second move
    with it."""
    t0, acc = time.process_time(), 0
    for i in range(2_000_000):
        acc += i * i % 7
    return round((time.process_time() - t0) * 1000, 1)


def _steal_seconds() -> float:
    """CPU time the hypervisor gave to others (all CPUs), from /proc/stat: noise in these runs."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reference(args: argparse.Namespace) -> dict:
    pool = TaskPool(_data_dir())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(pool.reference, indent=1, sort_keys=True))
    return {"written": str(args.output), "tasks": len(pool.reference)}


def check_cost(args: argparse.Namespace) -> dict:
    """CPU per evidently input-drift check: direct drift tests vs the same decision via a Report."""
    from streams.detectors import InputDrift
    from streams.drift import FEATURE_COLUMNS
    from streams.settings import InputDriftConfig

    rng = np.random.default_rng(args.seed)
    cfg = InputDriftConfig()
    det = InputDrift(cfg, FEATURE_COLUMNS)
    n = cfg.reference_size + cfg.current_size
    det.add([{c: float(rng.normal()) for c in FEATURE_COLUMNS} for _ in range(n)])
    det.check(), det.check_with_report()  # imports and warm-up
    out = {"rows": f"{cfg.reference_size} vs {cfg.current_size}", "columns": len(FEATURE_COLUMNS)}
    for name, fn, reps in (
        ("direct_ms", det.check, args.repeat * 10),
        ("report_ms", det.check_with_report, args.repeat),
    ):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        out[name] = round((time.process_time() - t0) / reps * 1000, 2)
    out["load_average_1m"] = os.getloadavg()[0]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect")
    d.add_argument("--events", type=int, default=100_000)
    d.add_argument("--drop", type=float, default=0.15)
    d.add_argument("--cheap-share", type=float, default=0.7)
    d.add_argument("--trials", type=int, default=10, help="drift trials per task")
    d.add_argument("--prefix", type=int, default=500, help="stable task events before the drift")
    d.add_argument("--batch", type=int, default=50)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--task", action="append", help="only these tasks (repeatable), e.g. gsm8k")
    d.add_argument("--skip-false-alarms", action="store_true")
    d.add_argument(
        "--fa-seeds",
        type=int,
        default=1,
        help="false-alarm runs of --events each (fresh detectors, seeds seed..)",
    )
    d.add_argument(
        "--reference",
        choices=("configured", "learned"),
        default="configured",
        help="configured: each (task, model) reference is its benchmark acceptance; learned: live",
    )
    t = sub.add_parser("throughput")
    t.add_argument("--requests", type=int, default=20_000, help="calls (each with one feedback)")
    t.add_argument("--cheap-share", type=float, default=0.7)
    t.add_argument("--batch-size", type=int, default=1000)
    t.add_argument("--bootstrap", default="127.0.0.1:9092")
    t.add_argument("--timeout", type=float, default=300)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--profile", type=Path, help="write a py-spy profile of the worker (collapsed stacks) here"
    )
    c = sub.add_parser("check", help="CPU per input-drift check (direct tests vs evidently Report)")
    c.add_argument("--repeat", type=int, default=3)
    c.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("reference")
    r.add_argument("-o", "--output", type=Path, default=Path(".state/reference.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.cmd == "detect":
        res = detect(args)
    elif args.cmd == "throughput":
        res = asyncio.run(_throughput(args))
    elif args.cmd == "check":
        res = check_cost(args)
    else:
        res = reference(args)
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()

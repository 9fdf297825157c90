"""``make demo``: the closed loop end to end, unattended, on the local stack.

Needs ``make setup up`` (Kafka + MLflow running). Every process it starts is tracked by PID and
stopped on exit, on failure and on Ctrl-C; logs go to ``.state/demo/<run-id>/``; the report
(markdown + PNG plots) to ``reports/demo/<run-id>/``.

1. train the initial router on the bootstrap data *without* the task that appears later
   (``switchyard train run --no-kafka``, ``SWITCHYARD_TRAIN_EXCLUDE_TASKS``), registered in MLflow
   under a per-run model name, alias ``champion``;
2. start the upstream emulator, the gateway (Ray Serve, API key), the streams worker (webhook to a
   local receiver) and the retrain worker, on a per-run Kafka topic prefix;
3. replay mixed traffic with feedback: steady, then the new task appears and the cheap model
   answers it wrongly (emulator drift);
4. wait for the drift alert (``switchyard.alerts.v1`` and the webhook) and its evidently report;
5. the retrain worker distils, retrains, gates, promotes and hot-swaps the router into the running
   gateway while traffic continues;
6. replay again: quality on the new task and the savings versus always calling the strong model;
7. write the report and print a summary.

Settings: ``SWITCHYARD_DEMO_*`` (:class:`DemoSettings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("switchyard.demo")
ROOT = Path(__file__).resolve().parents[1]
CHEAP = "mistralai/Mixtral-8x7B-Instruct-v0.1"
BASE_MIX = {"mmlu": 1.0, "gsm8k": 1.0, "routerbench": 1.0}
DEMO_TARGET = 0.95  # the gateway's default quality_target, which the replayed requests keep


class DemoSettings(BaseSettings):
    """Knobs of ``make demo`` (env ``SWITCHYARD_DEMO_*``)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_DEMO_", env_file=None, extra="ignore")

    new_task: str = Field(default="professional_law", description="MMLU subject that appears later.")
    max_rows: int = Field(default=400, ge=50, description="Bootstrap rows per dataset for training.")
    steady_requests: int = Field(default=150, ge=10)
    drift_chunk: int = Field(default=60, ge=10, description="Requests per replay chunk while waiting.")
    drift_max_requests: int = Field(default=720, ge=10, description="Give up on the alert after these.")
    after_requests: int = Field(default=240, ge=10)
    concurrency: int = Field(default=8, ge=1)
    during_rate: float = Field(default=3.0, gt=0, description="Requests/s while the retrain runs.")
    feedback_share: float = Field(default=1.0, ge=0, le=1)
    train_timeout_s: float = Field(default=600.0, gt=0)
    start_timeout_s: float = Field(default=420.0, gt=0)
    alert_extra_wait_s: float = Field(default=90.0, ge=0)
    retrain_timeout_s: float = Field(default=480.0, gt=0)
    budget_usd: float = Field(default=2.0, ge=0)
    budget_calls: int = Field(default=240, ge=0)
    emulator_speed: float = Field(default=0.0, ge=0)
    seed: int = 0
    report_root: Path = Field(
        default=ROOT / "reports" / "demo", description="Reports go to <root>/<run-id>/."
    )


class DemoError(RuntimeError):
    """A bounded wait failed; the message names the log to read."""


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path


@dataclass
class Processes:
    """Child processes of the demo: each in its own session (its PID is its process group), so
    stopping one also stops what it spawned (Ray's raylet, etc.)."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        out = log_path.open("ab")
        p = subprocess.Popen(  # noqa: S603 - our own CLI
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        log.info("started %s (pid %d): %s", name, p.pid, " ".join(cmd))
        return proc

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise DemoError(f"{p.name} exited with code {p.popen.returncode}; see {p.log_path}")

    def stop_all(self) -> None:
        """SIGTERM each (in reverse start order), wait, then SIGKILL its process group."""
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            # the process group (its PID) catches what it spawned and left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.popen.pid, signal.SIGKILL)
            if p.popen.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=5)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout_s: float, procs: Processes, log_hint: Path, every: float = 1.0) -> Any:  # noqa: ANN001
    """Poll ``check()`` until truthy; raise :class:`DemoError` naming ``log_hint`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            got = check()
            if got:
                return got
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(every)
    raise DemoError(f"{what} not ready after {timeout_s:.0f}s ({last or 'no answer'}); see {log_hint}")


# --------------------------------------------------------------------------- traffic


@dataclass
class Req:
    """One replayed request, stamped with its completion time."""

    t: float
    stage: str
    task: str
    ok: bool
    error: str | None
    model: str | None
    tier: str | None
    cost: float | None
    correct: float | None
    base_cost: float
    base_correct: float | None
    dataset: str = ""


class Traffic:
    """Replays chunks of benchmark traffic through the gateway (infra.replay) and keeps the rows."""

    def __init__(
        self, base_url: str, api_key: str, emulator_url: str, data_dir: Path, cfg: DemoSettings
    ) -> None:
        from infra.emulator.corpus import Corpus
        from infra.emulator.settings import EmulatorSettings
        from services.catalog import load_catalog

        self.base_url, self.api_key, self.emulator_url, self.cfg = base_url, api_key, emulator_url, cfg
        self.catalog = load_catalog()
        self.tiers = {m.id: m.tier for m in self.catalog.models}
        self.corpus = Corpus.load(data_dir, None, EmulatorSettings().corpus_cache_dir())
        self.datasets = {rec.task: rec.dataset for rec in self.corpus.by_text.values()}
        self.rows: list[Req] = []
        self._chunk = 0

    def run(
        self,
        stage: str,
        *,
        count: int,
        mix: dict[str, float],
        exclude: tuple[str, ...] = (),
        drift: tuple = (),
        rate: float | None = None,
    ) -> list[Req]:
        """Send ``count`` requests of ``mix``; returns (and keeps) their rows."""
        from infra.replay.runner import ReplayConfig, Replayer
        from infra.replay.scenarios import Phase, Scenario

        self._chunk += 1
        sc = Scenario(
            name=stage,
            description=stage,
            phases=(Phase(name=stage, share=1.0, mix=mix, exclude_tasks=exclude, drift=drift),),
        )
        conf = ReplayConfig(
            base_url=self.base_url,
            api_key=self.api_key,
            emulator_url=self.emulator_url,
            count=count,
            concurrency=self.cfg.concurrency,
            rate=rate,
            feedback_share=self.cfg.feedback_share,
            seed=self.cfg.seed * 1000 + self._chunk,
            timeout_s=60.0,
        )
        stamps: list[float] = []

        class Stamped(Replayer):
            async def _one(self, *a, **kw):  # noqa: ANN002, ANN003, ANN202
                r = await super()._one(*a, **kw)
                stamps.append(time.time())
                return r

        rep = Stamped(conf, sc, self.corpus, self.catalog)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        asyncio.run(rep.run())
        out = []
        for r, t in zip(rep.results, stamps, strict=False):
            out.append(
                Req(
                    t,
                    stage,
                    r.task,
                    r.ok,
                    r.error,
                    r.model,
                    self.tiers.get(r.model or ""),
                    r.cost_usd,
                    r.correct,
                    r.baseline_cost_usd,
                    r.baseline_correct,
                    self.datasets.get(r.task, ""),
                )
            )
        self.rows.extend(out)
        return out


def stats(rows: list[Req], task: str | None = None, not_task: str | None = None) -> dict[str, Any]:
    """Quality (ground truth), cost, errors and GPT-4-baseline comparison of some rows."""
    sel = [r for r in rows if (task is None or r.task == task) and (not_task is None or r.task != not_task)]
    ok = [r for r in sel if r.ok]
    graded = [r for r in ok if r.correct is not None and r.base_correct is not None]
    q = sum(r.correct for r in graded) / len(graded) if graded else float("nan")
    bq = sum(r.base_correct for r in graded) / len(graded) if graded else float("nan")
    cost = sum(r.cost or 0.0 for r in ok)
    bcost = sum(r.base_cost for r in ok)
    cheap = sum(1 for r in ok if r.tier == "budget")
    return {
        "requests": len(sel),
        "errors": len(sel) - len(ok),
        "quality": q,
        "strong_quality": bq,
        "quality_ratio": q / bq if bq else float("nan"),
        "cost_usd": cost,
        "strong_cost_usd": bcost,
        "savings": 1 - cost / bcost if bcost else float("nan"),
        "cheap_share": cheap / len(ok) if ok else float("nan"),
    }


def target_table(rows: list[Req], target: float) -> list[str]:
    """Markdown: realized quality vs the quality target per stage and dataset, and over all."""
    out = [
        "",
        f"## Realized quality vs the target ({target:.2f} of GPT-4's; ±1.5 points is the contract)",
        "",
        "| stage | dataset | requests | quality / GPT-4 | minus target | cost ratio | cheap share |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for stage in ("steady", "after"):
        sel = [r for r in rows if r.stage == stage]
        for ds in [*sorted({r.dataset for r in sel if r.dataset}), None]:
            st = stats([r for r in sel if ds is None or r.dataset == ds])
            if not st["requests"]:
                continue
            out.append(
                f"| {stage} | {ds or 'all'} | {st['requests']} | {st['quality_ratio']:.3f} | "
                f"{100 * (st['quality_ratio'] - target):+.1f} pt | {1 - st['savings']:.3f} | "
                f"{st['cheap_share']:.1%} |"
            )
    return out


def stage_table(rows: list[Req], new_task: str) -> list[str]:
    """Markdown: quality and cost per stage, the new task apart from the others, vs all-GPT-4."""
    out = [
        "",
        "## Per stage (quality and cost relative to sending everything to GPT-4)",
        "",
        "| stage | tasks | requests | errors | quality | quality / GPT-4 | cost per 1k req "
        "| cost ratio | cheap share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage in ("steady", "drift", "during retrain", "after"):
        sel = [r for r in rows if r.stage == stage]
        for label, kw in ((new_task, {"task": new_task}), ("others", {"not_task": new_task})):
            st = stats(sel, **kw)
            if not st["requests"]:
                continue
            ok = st["requests"] - st["errors"]
            out.append(
                f"| {stage} | {label} | {st['requests']} | {st['errors']} | {st['quality']:.3f} | "
                f"{st['quality_ratio']:.3f} | ${1000 * st['cost_usd'] / max(ok, 1):.2f} | "
                f"{1 - st['savings']:.3f} | {st['cheap_share']:.1%} |"
            )
    return out


# --------------------------------------------------------------------------- helpers


def reference_acceptance(data_dir: Path) -> dict[str, dict[str, float]]:
    """Per task and graded model: the benchmark acceptance (the quality CUSUM's reference)."""
    from training.data import load_all

    bench = load_all(data_dir)
    labels = bench.labels()
    ref: dict[str, dict[str, float]] = {}
    for task, idx in bench.frame.groupby("task").groups.items():
        lab = labels.loc[idx]
        ref[str(task)] = {
            m: float((lab[m].dropna() >= 0.5).mean()) for m in lab.columns if lab[m].notna().any()
        }
    return ref


def emulator_catalog(path: Path, emulator_base: str) -> Path:
    """The built-in catalog with every provider pointed at this run's emulator."""
    from services.catalog import load_catalog

    raw = yaml.safe_load((ROOT / "services" / "catalog.yaml").read_text())
    for p in raw["providers"]:
        p["base_url"] = emulator_base + ("/v1" if p.get("kind", "openai") == "openai" else "")
    path.write_text(yaml.safe_dump(raw))
    load_catalog(path)
    return path


async def _apply_topics(bootstrap: str, prefix: str) -> None:
    from infra.topics import apply_topics

    await apply_topics(bootstrap, prefix)


def read_alerts(bootstrap: str, prefix: str) -> list[dict[str, Any]]:
    """Every record of the run's alerts topic (from the beginning)."""
    from aiokafka import AIOKafkaConsumer

    from services.contracts.topics import ALERTS, topic_name

    async def run() -> list[dict[str, Any]]:
        c = AIOKafkaConsumer(
            topic_name(ALERTS, prefix),
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await c.start()
        out: list[dict[str, Any]] = []
        try:
            for _ in range(4):
                for recs in (await c.getmany(timeout_ms=700)).values():
                    out.extend(json.loads(r.value) for r in recs)
        finally:
            await c.stop()
        return out

    return asyncio.run(run())


def readyz(url: str) -> dict[str, Any]:
    r = httpx.get(url + "/readyz", timeout=5)
    return r.json() if r.status_code == 200 else {}


# --------------------------------------------------------------------------- report


def write_report(
    out: Path,
    run_id: str,
    traffic: Traffic | None,
    events: dict[str, float],
    summary: dict[str, Any],
    steps: dict[str, str],
    new_task: str,
) -> Path:
    """Markdown + PNG plots over time (quality per task group, cost/request, tier share)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = traffic.rows if traffic else []
    pngs: list[str] = []
    if rows:
        t0 = rows[0].t

        def group(r: Req) -> str:
            if r.task == new_task:
                return new_task
            if r.task in ("gsm8k",):
                return "gsm8k"
            if r.task.startswith("mbpp") or r.task in traffic_rb_tasks(traffic):
                return "routerbench"
            return "mmlu (other)"

        def rolling(sel: list[Req], value, n: int) -> tuple[list[float], list[float]]:  # noqa: ANN001
            """x = seconds since the first request, y = mean of ``value`` over the last ``n`` rows."""
            xs, ys, win = [], [], []
            for r in sel:
                v = value(r)
                if v is None:
                    continue
                win = [*win[-(n - 1) :], v]
                if len(win) >= min(n, 10):
                    xs.append(r.t - t0)
                    ys.append(sum(win) / len(win))
            return xs, ys

        def markers(ax) -> None:  # noqa: ANN001
            for name, ts in events.items():
                ax.axvline(ts - t0, color="red" if "alert" in name else "green", ls="--", lw=1)
                ax.text(ts - t0, ax.get_ylim()[1], name, rotation=90, va="top", ha="right", fontsize=7)

        def finish(fig, ax, title: str, ylabel: str, name: str) -> None:  # noqa: ANN001
            ax.set_xlabel("seconds since the first request")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.legend(fontsize=8, loc="lower left")
            markers(ax)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)

        ok_rows = [r for r in rows if r.ok]
        fig, ax = plt.subplots(figsize=(9, 4))
        for g in sorted({group(r) for r in ok_rows}):
            sel = [r for r in ok_rows if group(r) == g]
            ax.plot(*rolling(sel, lambda r: r.correct, 40), label=g)
            ax.plot(
                *rolling(sel, lambda r: r.base_correct, 40), ls=":", lw=0.8, color=ax.lines[-1].get_color()
            )
        ax.set_ylim(0, 1.05)
        finish(
            fig,
            ax,
            "Quality per task (rolling 40 requests; dotted: always GPT-4)",
            "quality (ground truth)",
            "quality.png",
        )

        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(*rolling(ok_rows, lambda r: (r.cost or 0.0) * 1000, 50), label="switchyard")
        ax.plot(*rolling(ok_rows, lambda r: r.base_cost * 1000, 50), ls=":", label="always GPT-4")
        ax.set_ylim(bottom=0)
        finish(fig, ax, "Cost per request (rolling 50 requests)", "USD per 1000 requests", "cost.png")

        fig, ax = plt.subplots(figsize=(9, 4))
        for tier in ("budget", "mid", "frontier"):
            ax.plot(*rolling(ok_rows, lambda r, t=tier: float(r.tier == t), 50), label=tier)
        ax.set_ylim(0, 1.05)
        finish(fig, ax, "Share per tier (rolling 50 requests)", "share of requests", "tiers.png")
        pngs = ["quality.png", "cost.png", "tiers.png"]

    md = [f"# Switchyard demo {run_id}", "", "## Steps", ""]
    md += [f"- {k}: **{v}**" for k, v in steps.items()]
    md += stage_table(rows, new_task)
    md += target_table(rows, DEMO_TARGET)
    tl = summary.get("timeline") or {}
    if tl:
        md += [
            "",
            "## Timeline",
            "",
            f"- drift onset -> alert: {tl.get('onset_to_alert_s')} s "
            f"({tl.get('new_task_labelled_before_alert')} labelled {new_task} answers; detector "
            f"{tl.get('alert_detector')})",
            f"- alert -> new champion serving: {tl.get('alert_to_serving_s')} s",
            f"- drift onset -> new champion serving (the whole loop): {tl.get('onset_to_serving_s')} s",
        ]
    md += ["", "## Numbers", "", "```", json.dumps(summary, indent=1, default=str), "```", ""]
    md += [f"![{p}]({p})" for p in pngs]
    (out / "summary.json").write_text(json.dumps({"steps": steps, **summary}, indent=1, default=str))
    (out / "README.md").write_text("\n".join(md) + "\n")
    if rows:
        with (out / "requests.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps(r.__dict__) + "\n")
    return out / "README.md"


_RB_TASKS: set[str] | None = None


def traffic_rb_tasks(traffic: Traffic | None) -> set[str]:
    """Tasks of the RouterBench dataset in the corpus (for plot grouping)."""
    global _RB_TASKS  # noqa: PLW0603
    if _RB_TASKS is None:
        _RB_TASKS = set()
        with contextlib.suppress(Exception):
            for rec in traffic.corpus.by_hash.values():  # type: ignore[union-attr]
                if getattr(rec, "dataset", None) == "routerbench":
                    _RB_TASKS.add(rec.task)
    return _RB_TASKS


# --------------------------------------------------------------------------- the demo


def fmt(s: dict[str, Any]) -> str:
    return (
        f"{s['requests']} req, {s['errors']} errors, quality {s['quality']:.3f} "
        f"(GPT-4 {s['strong_quality']:.3f}), cost ${s['cost_usd']:.3f} vs ${s['strong_cost_usd']:.3f} "
        f"all-GPT-4 ({100 * s['savings']:.1f}% saved), cheap tier {100 * s['cheap_share']:.0f}%"
    )


def _mark_failed(steps: dict[str, str], why: str) -> None:
    """The first step not yet run is the one that failed."""
    for k, v in steps.items():
        if v == "not run":
            steps[k] = why
            return


def run(cfg: DemoSettings, procs: Processes, run_id: str, log_dir: Path, report_dir: Path) -> int:  # noqa: C901, PLR0915
    from infra.emulator.server import resolve_data_dir
    from services.contracts.settings import KafkaSettings, MLflowSettings
    from streams.testing import WebhookReceiver

    t_start = time.time()
    kafka, ml = KafkaSettings(), MLflowSettings()
    data_dir = resolve_data_dir(None)
    prefix = f"demo-{run_id}."
    model_name = f"switchyard-router-demo-{run_id}"
    state = log_dir / "state"
    (state / "cache").mkdir(parents=True, exist_ok=True)
    shared_cache = (ROOT / ".state" / "cache" / "embeddings").resolve()
    shared_cache.mkdir(parents=True, exist_ok=True)
    if not (state / "cache" / "embeddings").exists():
        (state / "cache" / "embeddings").symlink_to(shared_cache)
    ray_dir = Path(f"/tmp/sy-demo-{run_id[-6:]}")  # Ray's unix sockets need a short path
    api_key = f"sk-demo-{uuid.uuid4().hex[:16]}"
    cli = str(Path(sys.executable).parent / "switchyard")
    steps = {f"{i}": "not run" for i in range(1, 8)}
    names = {
        "1": "train initial router",
        "2": "start services",
        "3": "replay traffic + drift",
        "4": "drift alert",
        "5": "retrain + hot swap",
        "6": "replay after",
        "7": "report",
    }
    events: dict[str, float] = {}
    summary: dict[str, Any] = {
        "run_id": run_id,
        "topic_prefix": prefix,
        "registered_model": model_name,
        "new_task": cfg.new_task,
        "logs": str(log_dir),
    }
    traffic: Traffic | None = None
    receiver = WebhookReceiver()
    base_env = {
        **os.environ,
        "SWITCHYARD_KAFKA_TOPIC_PREFIX": prefix,
        "SWITCHYARD_MLFLOW_REGISTERED_MODEL": model_name,
        "SWITCHYARD_MLFLOW_EXPERIMENT": "switchyard-demo",
        # the router replicas resolve models:/ URIs with this (else MLflow's local default)
        "SWITCHYARD_MLFLOW_TRACKING_URI": ml.tracking_uri,
        "MLFLOW_TRACKING_URI": ml.tracking_uri,
        "SWITCHYARD_DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    train_env = {
        **base_env,
        "SWITCHYARD_STATE_DIR": str(state),
        "SWITCHYARD_TRAIN_EXCLUDE_TASKS": json.dumps([cfg.new_task]),
        "SWITCHYARD_TRAIN_MAX_ROWS": str(cfg.max_rows),
    }
    try:
        # ---- 1
        print(
            f"[1/7] training the initial router without {cfg.new_task!r} "
            f"(max {cfg.max_rows} rows/dataset) -> models:/{model_name}@champion ...",
            flush=True,
        )
        t = time.time()
        p = procs.start(
            "train-initial",
            [cli, "train", "run", "--reason", f"initial router (without {cfg.new_task})", "--no-kafka"],
            train_env,
        )
        try:
            rc = p.popen.wait(timeout=cfg.train_timeout_s)
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"initial training not done after {cfg.train_timeout_s:.0f}s; see {p.log_path}"
            ) from None
        if rc != 0:
            raise DemoError(f"initial training failed (exit {rc}); see {p.log_path}")
        procs.procs.remove(p)
        summary["initial_train_s"] = round(time.time() - t, 1)
        steps["1"] = "done"
        print(
            f"      champion registered in {summary['initial_train_s']}s (MLflow {ml.tracking_uri})",
            flush=True,
        )

        # ---- 2
        print(
            f"[2/7] starting emulator, gateway, streams worker, retrain worker (topic prefix {prefix!r}) ...",
            flush=True,
        )
        t = time.time()
        asyncio.run(_apply_topics(kafka.bootstrap, prefix))
        emu_port, gw_port, st_port = free_port(), free_port(), free_port()
        emu_url = f"http://127.0.0.1:{emu_port}"
        cat = emulator_catalog(log_dir / "catalog.yaml", emu_url)
        ref = log_dir / "reference.json"
        ref.write_text(json.dumps(reference_acceptance(data_dir)))
        emu = procs.start(
            "emulator",
            [cli, "emulator", "--port", str(emu_port), "--speed", str(cfg.emulator_speed)],
            base_env,
        )
        streams = procs.start(
            "streams",
            [
                cli,
                "stream",
                "worker",
                "--web-port",
                str(st_port),
                "--app-id",
                f"switchyard-demo-{run_id}",
                "--webhook-url",
                receiver.url,
                "--reference",
                str(ref),
            ],
            {**base_env, "SWITCHYARD_STREAMS_STATE_DIR": str(log_dir / "streams")},
        )
        gw_env = {
            **base_env,
            "SWITCHYARD_GATEWAY_STATE_DIR": str(ray_dir),
            "SWITCHYARD_GATEWAY_API_KEYS": json.dumps([api_key]),
            "SWITCHYARD_GATEWAY_ROUTER_TIMEOUT_S": "10",
        }
        gw = procs.start(
            "gateway",
            [
                cli,
                "serve",
                "--port",
                str(gw_port),
                "--router",
                f"models:/{model_name}@champion",
                "--catalog",
                str(cat),
                "--topic-prefix",
                prefix,
            ],
            gw_env,
        )
        trainer = procs.start(
            "retrain-worker",
            [cli, "train", "worker"],
            {
                **train_env,
                **{k: v for k, v in gw_env.items() if k.startswith("SWITCHYARD_GATEWAY_STATE")},
                "SWITCHYARD_TRAIN_CATALOG": str(cat),
                "RAY_AUTH_MODE": "token",
                "SWITCHYARD_TRAIN_GROUP_ID": f"switchyard-retrain-demo-{run_id}",
                "SWITCHYARD_TRAIN_BUDGET_USD": str(cfg.budget_usd),
                "SWITCHYARD_TRAIN_BUDGET_CALLS": str(cfg.budget_calls),
            },
        )
        wait_for(
            "emulator",
            lambda: httpx.get(emu_url + "/healthz", timeout=2).status_code == 200,
            cfg.start_timeout_s,
            procs,
            emu.log_path,
        )
        wait_for(
            "streams worker",
            lambda: httpx.get(f"http://127.0.0.1:{st_port}/stats/", timeout=3).status_code == 200,
            cfg.start_timeout_s,
            procs,
            streams.log_path,
            every=2,
        )
        gw_url = f"http://127.0.0.1:{gw_port}"
        ready = wait_for("gateway", lambda: readyz(gw_url), cfg.start_timeout_s, procs, gw.log_path, every=2)
        v0 = (ready.get("router") or {}).get("version")
        summary["router_v1"] = v0
        summary["start_services_s"] = round(time.time() - t, 1)
        steps["2"] = "done"
        print(
            f"      gateway {gw_url} (router {v0}), emulator {emu_url}, streams :{st_port}, "
            f"webhook {receiver.url}, retrain worker pid {trainer.popen.pid} "
            f"(ready in {summary['start_services_s']}s)",
            flush=True,
        )

        # ---- 3
        traffic = Traffic(gw_url + "/v1", api_key, emu_url, data_dir, cfg)
        print(
            f"[3/7] replaying traffic: {cfg.steady_requests} steady requests (no {cfg.new_task}) ...",
            flush=True,
        )
        steady = traffic.run("steady", count=cfg.steady_requests, mix=BASE_MIX, exclude=(cfg.new_task,))
        summary["steady"] = stats(steady)
        print(f"      steady: {fmt(summary['steady'])}", flush=True)
        from infra.replay.scenarios import DriftAction

        drift_mix = {**BASE_MIX, cfg.new_task: sum(BASE_MIX.values()) * 2 / 3}
        print(
            f"      drift: {cfg.new_task!r} appears (~40% of traffic) and {CHEAP} answers it wrongly ...",
            flush=True,
        )
        events["drift starts"] = time.time()
        sent, alert_body = 0, None
        first = True

        def alert_seen() -> bool:
            if receiver.bodies:
                return True
            with contextlib.suppress(Exception):
                st = httpx.get(f"http://127.0.0.1:{st_port}/stats/", timeout=5).json()
                return any(f.get("status") == "firing" for f in st.get("firing", []))
            return False

        while sent < cfg.drift_max_requests and not alert_seen():
            procs.check_alive()
            traffic.run(
                "drift",
                count=cfg.drift_chunk,
                mix=drift_mix,
                drift=(DriftAction(model=CHEAP, task=cfg.new_task),) if first else (),
            )
            first = False
            sent += cfg.drift_chunk
            law = stats([r for r in traffic.rows if r.stage == "drift"], task=cfg.new_task)
            print(
                f"      ... {sent} drift requests; {cfg.new_task} quality so far {law['quality']:.3f}",
                flush=True,
            )
        drift_rows = [r for r in traffic.rows if r.stage == "drift"]
        summary["drift"] = stats(drift_rows)
        summary["drift_new_task"] = stats(drift_rows, task=cfg.new_task)
        steps["3"] = "done"

        # ---- 4
        print(f"[4/7] waiting for the drift alert (webhook + {prefix}switchyard.alerts.v1) ...", flush=True)
        deadline = time.time() + cfg.alert_extra_wait_s
        while not receiver.bodies and time.time() < deadline:  # the page itself, not only /stats/
            procs.check_alive()
            time.sleep(2)
        alerts = read_alerts(kafka.bootstrap, prefix)
        firing = [a for a in alerts if a.get("status") == "firing"]
        summary["alerts"] = [
            {k: a.get(k) for k in ("task", "detector", "status", "summary", "report_url", "ts")}
            for a in alerts
        ]
        summary["webhook_posts"] = len(receiver.bodies)
        if not firing:
            steps["4"] = f"FAILED: no alert after {sent} drift requests; see {streams.log_path}"
            print(f"      no alert fired; see {streams.log_path}", flush=True)
        else:
            a = next((x for x in firing if x.get("task") == cfg.new_task), firing[0])
            events["alert"] = datetime.fromisoformat(a["ts"]).timestamp() if a.get("ts") else time.time()
            # drift onset -> alert: seconds and the new task's labelled answers it took (feedback_share
            # of them carry a label; the detector sees only labelled outcomes)
            seen = [r for r in drift_rows if r.task == cfg.new_task and r.t <= events["alert"]]
            summary["timeline"] = {
                "onset_to_alert_s": round(events["alert"] - events["drift starts"], 1),
                "new_task_requests_before_alert": len(seen),
                "new_task_labelled_before_alert": round(len(seen) * cfg.feedback_share),
                "alert_detector": a.get("detector"),
            }
            steps["4"] = "done"
            alert_body = receiver.bodies[0] if receiver.bodies else None
            print(
                f"      ALERT {a['status']} task={a['task']} detector={a['detector']}: {a['summary']}",
                flush=True,
            )
            print(f"      evidently report: {a.get('report_url')}", flush=True)
            if alert_body is not None:
                lab = alert_body[0] if isinstance(alert_body, list) and alert_body else alert_body
                print(
                    f"      on-call webhook got {len(receiver.bodies)} POST(s); first: "
                    f"{json.dumps(lab.get('labels', lab) if isinstance(lab, dict) else lab)[:300]}",
                    flush=True,
                )
            summary["alert_webhook_first"] = alert_body

        # ---- 5
        if firing:
            print(
                f"[5/7] retrain worker: distil -> retrain -> gate -> promote -> hot swap "
                f"(traffic continues at {cfg.during_rate}/s; up to {cfg.retrain_timeout_s:.0f}s) ...",
                flush=True,
            )
            t = time.time()
            swapped = None
            while time.time() - t < cfg.retrain_timeout_s:
                procs.check_alive()
                traffic.run(
                    "during retrain",
                    count=max(10, int(cfg.during_rate * 10)),
                    mix=drift_mix,
                    rate=cfg.during_rate,
                )
                with contextlib.suppress(Exception):
                    v = (readyz(gw_url).get("router") or {}).get("version")
                    if v and v != v0:
                        swapped = v
                        break
            during = [r for r in traffic.rows if r.stage == "during retrain"]
            summary["during_retrain"] = stats(during)
            if swapped:
                events["new router deployed"] = time.time()
                summary["router_v2"] = swapped
                summary["alert_to_swap_s"] = round(time.time() - events["alert"], 1)
                summary.setdefault("timeline", {}).update(
                    {
                        "alert_to_serving_s": summary["alert_to_swap_s"],
                        "onset_to_serving_s": round(
                            events["new router deployed"] - events["drift starts"], 1
                        ),
                    }
                )
                steps["5"] = "done"
                print(
                    f"      router hot-swapped {v0} -> {swapped}, "
                    f"{summary['alert_to_swap_s']}s after the alert; "
                    f"traffic meanwhile: {summary['during_retrain']['requests']} requests, "
                    f"{summary['during_retrain']['errors']} errors",
                    flush=True,
                )
            else:
                steps["5"] = f"NOT COMPLETED within {cfg.retrain_timeout_s:.0f}s; see {trainer.log_path}"
                print(
                    f"      no swap within {cfg.retrain_timeout_s:.0f}s; see {trainer.log_path}", flush=True
                )
            # the loop runs after the initial one (same state dir), oldest first; prefer the one
            # whose challenger is now serving
            runs = sorted(
                (json.loads(f.read_text()) for f in (state / "loop" / "runs").glob("*/state.json")),
                key=lambda r: str(r.get("created", "")),
            )[1:]
            if runs:
                st = next((r for r in runs if (r.get("verdict") or {}).get("challenger") == swapped), runs[0])
                summary["retrain_run"] = {
                    k: st.get(k)
                    for k in ("run_id", "status", "stage", "verdict", "timings", "error", "redeploy")
                }
                v = st.get("verdict") or {}
                print(
                    f"      retrain run {st.get('run_id')}: gate {'PASS' if v.get('passed') else 'FAIL'} "
                    f"({'; '.join(v.get('reasons') or [])}); timings "
                    + ", ".join(f"{k} {x:.1f}" for k, x in (st.get("timings") or {}).items()),
                    flush=True,
                )
        else:
            steps["5"] = "skipped (no alert)"

        # ---- 6
        print(f"[6/7] replaying {cfg.after_requests} requests with the same drifted mix ...", flush=True)
        after = traffic.run("after", count=cfg.after_requests, mix=drift_mix)
        summary["after"] = stats(after)
        summary["after_new_task"] = stats(after, task=cfg.new_task)
        summary["after_other_tasks"] = stats(after, not_task=cfg.new_task)
        steps["6"] = "done" if steps["5"] == "done" else "done (without a new router)"
        b, a_ = summary["drift_new_task"], summary["after_new_task"]
        print(
            f"      {cfg.new_task}: quality {b['quality']:.3f} during drift -> {a_['quality']:.3f} after "
            f"(GPT-4 {a_['strong_quality']:.3f}); cheap share {100 * b['cheap_share']:.0f}% -> "
            f"{100 * a_['cheap_share']:.0f}%",
            flush=True,
        )
        print(f"      all traffic after: {fmt(summary['after'])}", flush=True)
        return_code = 0 if all(steps[k].startswith("done") for k in "123456") else 2
    except DemoError as exc:
        print(f"ERROR: {exc}", flush=True)
        summary["error"] = str(exc)
        _mark_failed(steps, f"FAILED: {exc}")
        return_code = 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        summary["error"] = "interrupted"
        _mark_failed(steps, "interrupted")
        return_code = 130
    finally:
        receiver.close()
        print("      stopping the processes the demo started ...", flush=True)
        procs.stop_all()
        import shutil

        shutil.rmtree(ray_dir, ignore_errors=True)
    # ---- 7
    print("[7/7] writing the report ...", flush=True)
    summary["total_s"] = round(time.time() - t_start, 1)
    steps["7"] = "done"
    labelled = {f"{k}. {names[k]}": v for k, v in steps.items()}
    path = write_report(report_dir, run_id, traffic, events, summary, labelled, cfg.new_task)
    print("\n== Switchyard demo summary ==")
    for k, v in labelled.items():
        print(f"  {k}: {v}")
    for key in ("steady", "drift", "after"):
        if key in summary:
            print(f"  {key:>6}: {fmt(summary[key])}")
    if "after_new_task" in summary:
        b, a_ = summary["drift_new_task"], summary["after_new_task"]
        print(
            f"  {cfg.new_task}: quality {b['quality']:.3f} = {100 * b['quality_ratio']:.1f}% of GPT-4's "
            f"(drift, old router) -> {a_['quality']:.3f} = {100 * a_['quality_ratio']:.1f}% (after); "
            f"cheap tier {100 * b['cheap_share']:.0f}% -> {100 * a_['cheap_share']:.0f}%"
        )
        o = summary["after_other_tasks"]
        print(
            f"  other tasks after: quality {100 * o['quality_ratio']:.1f}% of GPT-4's at "
            f"{100 * o['savings']:.1f}% lower cost"
        )
    if "timeline" in summary:
        tl = summary["timeline"]
        print(
            f"  timeline: drift onset -> alert {tl.get('onset_to_alert_s')}s "
            f"({tl.get('new_task_labelled_before_alert')} labelled {cfg.new_task} answers, "
            f"{tl.get('alert_detector')} detector); alert -> new champion serving "
            f"{tl.get('alert_to_serving_s')}s; onset -> serving {tl.get('onset_to_serving_s')}s"
        )
    if "after" in summary:
        a_ = summary["after"]
        print(
            f"  whole traffic after the loop: cost ratio {1 - a_['savings']:.3f} at quality "
            f"{a_['quality_ratio']:.3f} of all-GPT-4 (RouteNLP reports 0.159 at 0.971 on its own data)"
        )
    print(f"  total time {summary['total_s']}s; report {path}; logs {log_dir}")
    return return_code


def main() -> int:
    """Entry point of ``make demo``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = DemoSettings()
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    log_dir = (ROOT / ".state" / "demo" / run_id).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    report_dir = cfg.report_root / run_id
    procs = Processes(log_dir)

    def on_term(signum, frame):  # noqa: ANN001, ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # a background job of a non-interactive shell starts with SIGINT ignored: take it back
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"Switchyard demo {run_id}: logs {log_dir}", flush=True)
    try:
        return run(cfg, procs, run_id, log_dir, report_dir)
    except KeyboardInterrupt:
        print("interrupted; stopping the processes the demo started", flush=True)
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

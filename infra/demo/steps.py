"""The steps of the demo, one function each. A step prints its progress and returns what it found;
:mod:`.main` runs them in order and assembles the summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from .processes import (
    DemoError,
    Proc,
    Processes,
    emulator_catalog,
    free_port,
    readyz,
    start_emulator,
    start_gateway,
    start_initial_training,
    start_retrain_worker,
    start_streams,
    wait_for,
    write_reference,
)
from .report import fmt, stats
from .settings import BASE_MIX, CHEAP, RunContext
from .traffic import Req, Traffic

STEP_NAMES = {
    "1": "train initial router",
    "2": "start services",
    "3": "replay traffic + drift",
    "4": "drift alert",
    "5": "retrain + hot swap",
    "6": "replay after",
    "7": "report",
}


# --------------------------------------------------------------------------- 1


def train_initial(ctx: RunContext, procs: Processes) -> float:
    """Train and register the first champion without the new task; the seconds it took."""
    cfg = ctx.cfg
    print(
        f"[1/7] training the initial router without {cfg.new_task!r} "
        f"(max {cfg.max_rows} rows/dataset) -> models:/{ctx.model_name}@champion ...",
        flush=True,
    )
    t = time.time()
    p = start_initial_training(procs, ctx)
    try:
        rc = p.popen.wait(timeout=cfg.train_timeout_s)
    except subprocess.TimeoutExpired:
        raise DemoError(
            f"initial training not done after {cfg.train_timeout_s:.0f}s; see {p.log_path}"
        ) from None
    if rc != 0:
        raise DemoError(f"initial training failed (exit {rc}); see {p.log_path}")
    procs.procs.remove(p)
    seconds = round(time.time() - t, 1)
    print(f"      champion registered in {seconds}s (MLflow {ctx.tracking_uri})", flush=True)
    return seconds


# --------------------------------------------------------------------------- 2


@dataclass
class Services:
    """The running services of the run and the router version the gateway started with."""

    emulator_url: str
    gateway_url: str
    streams_port: int
    streams: Proc
    gateway: Proc
    trainer: Proc
    router_version: str | None
    seconds: float

    @property
    def streams_stats_url(self) -> str:
        return f"http://127.0.0.1:{self.streams_port}/stats/"


def start_services(ctx: RunContext, procs: Processes, webhook_url: str) -> Services:
    """Topics, then emulator, streams worker, gateway and retrain worker; wait until all are up."""
    from services.contracts.topic_admin import apply_topics

    cfg = ctx.cfg
    print(
        f"[2/7] starting emulator, gateway, streams worker, retrain worker (topic prefix {ctx.prefix!r}) ...",
        flush=True,
    )
    t = time.time()
    asyncio.run(apply_topics(ctx.kafka_bootstrap, ctx.prefix))
    emu_port, gw_port, st_port = free_port(), free_port(), free_port()
    emu_url = f"http://127.0.0.1:{emu_port}"
    catalog = emulator_catalog(ctx.log_dir / "catalog.yaml", emu_url)
    reference = write_reference(ctx)
    emu = start_emulator(procs, ctx, emu_port)
    streams = start_streams(procs, ctx, st_port, webhook_url, reference)
    gateway = start_gateway(procs, ctx, gw_port, catalog)
    trainer = start_retrain_worker(procs, ctx, catalog)
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
    ready = wait_for("gateway", lambda: readyz(gw_url), cfg.start_timeout_s, procs, gateway.log_path, every=2)
    version, seconds = (ready.get("router") or {}).get("version"), round(time.time() - t, 1)
    services = Services(emu_url, gw_url, st_port, streams, gateway, trainer, version, seconds)
    print(
        f"      gateway {gw_url} (router {services.router_version}), emulator {emu_url}, streams :{st_port}, "
        f"webhook {webhook_url}, retrain worker pid {trainer.popen.pid} "
        f"(ready in {services.seconds}s)",
        flush=True,
    )
    return services


# --------------------------------------------------------------------------- 3


def replay_steady(traffic: Traffic, ctx: RunContext) -> list[Req]:
    """The steady traffic, without the new task."""
    cfg = ctx.cfg
    print(
        f"[3/7] replaying traffic: {cfg.steady_requests} steady requests (no {cfg.new_task}) ...",
        flush=True,
    )
    steady = traffic.run("steady", count=cfg.steady_requests, mix=BASE_MIX, exclude=(cfg.new_task,))
    print(f"      steady: {fmt(stats(steady))}", flush=True)
    return steady


@dataclass
class DriftReplay:
    rows: list[Req]
    sent: int


def replay_drift(
    traffic: Traffic, ctx: RunContext, procs: Processes, services: Services, webhook_bodies: list[Any]
) -> DriftReplay:
    """The new task appears and the cheap model answers it wrongly (emulator drift): chunks of
    traffic until an alert fires (webhook or the streams worker's stats) or the cap is reached."""
    from infra.replay.scenarios import DriftAction

    cfg = ctx.cfg
    print(
        f"      drift: {cfg.new_task!r} appears (~40% of traffic) and {CHEAP} answers it wrongly ...",
        flush=True,
    )
    sent = 0
    first = True

    def alert_seen() -> bool:
        if webhook_bodies:
            return True
        with contextlib.suppress(Exception):
            st = httpx.get(services.streams_stats_url, timeout=5).json()
            return any(f.get("status") == "firing" for f in st.get("firing", []))
        return False

    while sent < cfg.drift_max_requests and not alert_seen():
        procs.check_alive()
        traffic.run(
            "drift",
            count=cfg.drift_chunk,
            mix=cfg.drift_mix,
            drift=(DriftAction(model=CHEAP, task=cfg.new_task),) if first else (),
        )
        first = False
        sent += cfg.drift_chunk
        law = stats(traffic.stage_rows("drift"), task=cfg.new_task)
        print(
            f"      ... {sent} drift requests; {cfg.new_task} quality so far {law['quality']:.3f}",
            flush=True,
        )
    return DriftReplay(traffic.stage_rows("drift"), sent)


# --------------------------------------------------------------------------- 4


@dataclass
class AlertWait:
    """The run's alerts topic, and the firing alert on the new task (else the first firing one)."""

    alerts: list[dict[str, Any]]
    webhook_posts: int
    alert: dict[str, Any] | None = None
    alert_ts: float | None = None
    timeline: dict[str, Any] = field(default_factory=dict)
    webhook_first: Any = None


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


def await_alert(
    ctx: RunContext,
    procs: Processes,
    services: Services,
    webhook_bodies: list[Any],
    drift: DriftReplay,
    drift_started: float,
) -> AlertWait:
    """Wait (bounded) for the page on the webhook, then read the alerts topic; the timeline from
    drift onset to the alert, in seconds and in labelled answers of the new task."""
    cfg = ctx.cfg
    print(f"[4/7] waiting for the drift alert (webhook + {ctx.prefix}switchyard.alerts.v1) ...", flush=True)
    deadline = time.time() + cfg.alert_extra_wait_s
    while not webhook_bodies and time.time() < deadline:  # the page itself, not only /stats/
        procs.check_alive()
        time.sleep(2)
    alerts = read_alerts(ctx.kafka_bootstrap, ctx.prefix)
    firing = [a for a in alerts if a.get("status") == "firing"]
    result = AlertWait(alerts=alerts, webhook_posts=len(webhook_bodies))
    if not firing:
        print(f"      no alert fired; see {services.streams.log_path}", flush=True)
        return result
    a = next((x for x in firing if x.get("task") == cfg.new_task), firing[0])
    alert_ts = datetime.fromisoformat(a["ts"]).timestamp() if a.get("ts") else time.time()
    # drift onset -> alert: seconds and the new task's answers it took (feedback_share of them
    # carry a label; the detector sees only labelled outcomes)
    seen = [r for r in drift.rows if r.task == cfg.new_task and r.t <= alert_ts]
    result.alert, result.alert_ts = a, alert_ts
    result.timeline = {
        "onset_to_alert_s": round(alert_ts - drift_started, 1),
        "new_task_requests_before_alert": len(seen),
        "new_task_labelled_before_alert": round(len(seen) * cfg.feedback_share),
        "alert_detector": a.get("detector"),
    }
    result.webhook_first = webhook_bodies[0] if webhook_bodies else None
    print(f"      ALERT {a['status']} task={a['task']} detector={a['detector']}: {a['summary']}", flush=True)
    print(f"      evidently report: {a.get('report_url')}", flush=True)
    body = result.webhook_first
    if body is not None:
        lab = body[0] if isinstance(body, list) and body else body
        print(
            f"      on-call webhook got {len(webhook_bodies)} POST(s); first: "
            f"{json.dumps(lab.get('labels', lab) if isinstance(lab, dict) else lab)[:300]}",
            flush=True,
        )
    return result


# --------------------------------------------------------------------------- 5


@dataclass
class RetrainWait:
    """Traffic while the retrain worker ran, the router version swapped in (if any) and the
    retrain run's state."""

    rows: list[Req]
    swapped: str | None
    swapped_at: float | None
    retrain_run: dict[str, Any] | None


def latest_retrain_run(state_dir: Path, swapped: str | None) -> dict[str, Any] | None:
    """The retrain run's state: the loop runs after the initial one (same state dir), oldest
    first; prefer the one whose challenger is now serving."""
    runs = sorted(
        (json.loads(f.read_text()) for f in (state_dir / "loop" / "runs").glob("*/state.json")),
        key=lambda r: str(r.get("created", "")),
    )[1:]
    if not runs:
        return None
    return next((r for r in runs if (r.get("verdict") or {}).get("challenger") == swapped), runs[0])


def retrain_and_swap(
    ctx: RunContext, procs: Processes, services: Services, traffic: Traffic, alert_ts: float
) -> RetrainWait:
    """Keep traffic flowing while the retrain worker distils, retrains, gates, promotes and
    redeploys; done when the gateway reports a new router version (or on the timeout)."""
    cfg = ctx.cfg
    print(
        f"[5/7] retrain worker: distil -> retrain -> gate -> promote -> hot swap "
        f"(traffic continues at {cfg.during_rate}/s; up to {cfg.retrain_timeout_s:.0f}s) ...",
        flush=True,
    )
    v0 = services.router_version
    t = time.time()
    swapped = None
    while time.time() - t < cfg.retrain_timeout_s:
        procs.check_alive()
        traffic.run(
            "during retrain",
            count=max(10, int(cfg.during_rate * 10)),
            mix=cfg.drift_mix,
            rate=cfg.during_rate,
        )
        with contextlib.suppress(Exception):
            v = (readyz(services.gateway_url).get("router") or {}).get("version")
            if v and v != v0:
                swapped = v
                break
    during = traffic.stage_rows("during retrain")
    swapped_at = time.time() if swapped else None
    if swapped_at is not None:
        st = stats(during)
        print(
            f"      router hot-swapped {v0} -> {swapped}, "
            f"{round(swapped_at - alert_ts, 1)}s after the alert; "
            f"traffic meanwhile: {st['requests']} requests, {st['errors']} errors",
            flush=True,
        )
    else:
        print(
            f"      no swap within {cfg.retrain_timeout_s:.0f}s; see {services.trainer.log_path}", flush=True
        )
    run = latest_retrain_run(ctx.state_dir, swapped)
    if run is not None:
        v = run.get("verdict") or {}
        print(
            f"      retrain run {run.get('run_id')}: gate {'PASS' if v.get('passed') else 'FAIL'} "
            f"({'; '.join(v.get('reasons') or [])}); timings "
            + ", ".join(f"{k} {x:.1f}" for k, x in (run.get("timings") or {}).items()),
            flush=True,
        )
        run = {
            k: run.get(k) for k in ("run_id", "status", "stage", "verdict", "timings", "error", "redeploy")
        }
    return RetrainWait(during, swapped, swapped_at, run)


# --------------------------------------------------------------------------- 6


def replay_after(traffic: Traffic, ctx: RunContext, drift_new_task: dict[str, Any]) -> list[Req]:
    """The same drifted mix after the loop; compares the new task with its drift-time numbers."""
    cfg = ctx.cfg
    print(f"[6/7] replaying {cfg.after_requests} requests with the same drifted mix ...", flush=True)
    after = traffic.run("after", count=cfg.after_requests, mix=cfg.drift_mix)
    b, a_ = drift_new_task, stats(after, task=cfg.new_task)
    print(
        f"      {cfg.new_task}: quality {b['quality']:.3f} during drift -> {a_['quality']:.3f} after "
        f"(GPT-4 {a_['strong_quality']:.3f}); cheap share {100 * b['cheap_share']:.0f}% -> "
        f"{100 * a_['cheap_share']:.0f}%",
        flush=True,
    )
    print(f"      all traffic after: {fmt(stats(after))}", flush=True)
    return after

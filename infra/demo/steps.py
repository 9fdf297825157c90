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
from .settings import BASE_MIX, CHEAP, DemoSettings, RunContext
from .traffic import Req, Traffic

STEP_NAMES = {
    "1": "train initial router",
    "2": "start services",
    "3": "replay traffic + drift",
    "4": "drift alert",
    "5": "retrain + hot swap",
    "6": "replay after",
    "7": "opportunity task + notice",
    "8": "opportunity retrain + hot swap",
    "9": "opportunity replay after",
    "10": "semantic cache",
    "11": "report",
}
STEPS = len(STEP_NAMES)
DRIFT_STEPS = ("3", "4", "5", "6")
OPPORTUNITY_STEPS = ("7", "8", "9")
CACHE_STEPS = ("10",)


# --------------------------------------------------------------------------- 1


def train_initial(ctx: RunContext, procs: Processes) -> float:
    """Train and register the first champion without the new task; the seconds it took."""
    cfg = ctx.cfg
    print(
        f"[1/{STEPS}] training the initial router without {', '.join(cfg.story_tasks)} "
        f"(max {cfg.rows} rows/dataset) -> models:/{ctx.model_name}@champion ...",
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
    api_key: str = ""  # the demo's key: the gateway's /metrics needs one

    @property
    def streams_stats_url(self) -> str:
        return f"http://127.0.0.1:{self.streams_port}/stats/"


def start_services(ctx: RunContext, procs: Processes, webhook_url: str) -> Services:
    """Topics, then emulator, streams worker, gateway and retrain worker; wait until all are up."""
    from services.contracts.topic_admin import apply_topics

    cfg = ctx.cfg
    print(
        f"[2/{STEPS}] starting emulator, gateway, streams worker, retrain worker "
        f"(topic prefix {ctx.prefix!r}) ...",
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
    trainer = start_retrain_worker(procs, ctx, catalog, f"http://127.0.0.1:{gw_port}")
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
    services = Services(emu_url, gw_url, st_port, streams, gateway, trainer, version, seconds, ctx.api_key)
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
        f"[3/{STEPS}] replaying traffic: {cfg.steady_requests} steady requests "
        f"(no {', '.join(cfg.story_tasks)}) ...",
        flush=True,
    )
    steady = traffic.run("steady", count=cfg.steady_requests, mix=BASE_MIX, exclude=tuple(cfg.story_tasks))
    print(f"      steady: {fmt(stats(steady))}", flush=True)
    return steady


def opportunity_excluded(cfg: DemoSettings) -> tuple[str, ...]:
    """Story (b)'s task stays out of the traffic until its own phase."""
    return (cfg.opportunity_task,) if cfg.opportunity_story else ()


def is_notice(alert: dict[str, Any]) -> bool:
    """An informational notice (a savings opportunity), not a drift alert."""
    return alert.get("detector") == "opportunity" or alert.get("severity") == "info"


def firing_now(services: Services) -> list[dict[str, Any]]:
    """What the streams worker reports firing right now (``[]`` when it does not answer)."""
    with contextlib.suppress(Exception):
        st = httpx.get(services.streams_stats_url, timeout=5).json()
        return [f for f in st.get("firing", []) if f.get("status") == "firing"]
    return []


def serving_version(services: Services) -> str | None:
    """The router version the gateway serves now (None when it does not answer)."""
    with contextlib.suppress(Exception):
        return (readyz(services.gateway_url).get("router") or {}).get("version")
    return None


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
        return any(not is_notice(f) for f in firing_now(services))

    while sent < cfg.drift_max_requests and not alert_seen():
        procs.check_alive()
        traffic.run(
            "drift",
            count=cfg.drift_chunk,
            mix=cfg.drift_mix,
            exclude=opportunity_excluded(cfg),
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
    print(
        f"[4/{STEPS}] waiting for the drift alert (webhook + {ctx.prefix}switchyard.alerts.v1) ...",
        flush=True,
    )
    deadline = time.time() + cfg.alert_extra_wait_s
    while not webhook_bodies and time.time() < deadline:  # the page itself, not only /stats/
        procs.check_alive()
        time.sleep(2)
    alerts = read_alerts(ctx.kafka_bootstrap, ctx.prefix)
    firing = [a for a in alerts if a.get("status") == "firing" and not is_notice(a)]
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
    failed: str | None = None  # the run for the task ended without a new champion: why
    via: dict[str, Any] | None = None  # the run whose champion serves, when not the task's own


def _ts(value: Any) -> float:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def task_run(state_dir: Path, task: str, since: float) -> dict[str, Any] | None:
    """The loop run that serves ``task``'s retrain request made at or after ``since`` (epoch s):
    the earliest run naming the task with a request from then on. Requests for two stories may
    share one run (the worker coalesces what arrives together) or have one each."""
    runs = []
    for f in (state_dir / "loop" / "runs").glob("*/state.json"):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # being written
        if task in (r.get("tasks") or []) and any(_ts(t) >= since - 30 for t in r.get("requested_at") or []):
            runs.append(r)
    return min(runs, key=lambda r: _ts(r["created"])) if runs else None


def loop_runs(state_dir: Path) -> list[dict[str, Any]]:
    """Every loop run of the demo after the initial one, in order: tasks, reasons, verdict, swap."""
    out = []
    for f in sorted((state_dir / "loop" / "runs").glob("*/state.json")):
        with contextlib.suppress(OSError, ValueError):
            r = json.loads(f.read_text())
            if r.get("tasks"):
                v = r.get("verdict") or {}
                out.append(
                    {
                        "run_id": r.get("run_id"),
                        "created": r.get("created"),
                        "tasks": r.get("tasks"),
                        "reasons": r.get("reasons"),
                        "status": r.get("status"),
                        "passed": v.get("passed"),
                        "gate": "; ".join(v.get("reasons") or [])[:600],
                        "promoted": r.get("promoted"),
                        "version": r.get("router_version"),
                        "total_s": (r.get("timings") or {}).get("total_s"),
                    }
                )
    return sorted(out, key=lambda r: str(r["created"]))


def promoted_since(
    state_dir: Path, since: float, version: str | None, exclude: str | None = None
) -> dict[str, Any] | None:
    """The loop run created from ``since - 60`` on that promoted ``version`` (the one serving)."""
    if not version:
        return None
    for f in (state_dir / "loop" / "runs").glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError):
            r = json.loads(f.read_text())
            served = (r.get("redeploy") or {}).get("serving_version") or r.get("router_version")
            if (
                r.get("run_id") != exclude
                and r.get("promoted")
                and served == version
                and _ts(r["created"]) >= since - 60
            ):
                return r
    return None


def _run_summary(run: dict[str, Any]) -> dict[str, Any]:
    keep = ("run_id", "status", "stage", "tasks", "reasons", "verdict", "timings", "error", "redeploy")
    return {k: run.get(k) for k in keep} | {"router_version": run.get("router_version")}


def retrain_and_swap(
    ctx: RunContext,
    procs: Processes,
    services: Services,
    traffic: Traffic,
    since: float,
    *,
    task: str,
    stage: str = "during retrain",
    mix: dict[str, float] | None = None,
    step: str = "5",
) -> RetrainWait:
    """Keep traffic flowing while the retrain worker distils, retrains, gates, promotes and
    redeploys for ``task`` (the request made at ``since``); done when the gateway serves the
    version that run promoted (or when the run ends without one, or on the timeout)."""
    cfg = ctx.cfg
    timeout = cfg.retrain_timeout_s if step == "5" else cfg.opportunity_timeout_s
    print(
        f"[{step}/{STEPS}] retrain worker ({task}): distil -> retrain -> gate -> promote -> hot swap "
        f"(traffic continues at {cfg.during_rate}/s; up to {timeout:.0f}s) ...",
        flush=True,
    )
    v0 = serving_version(services) or services.router_version
    t = time.time()
    swapped = failed = None
    via: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    while time.time() - t < timeout:
        procs.check_alive()
        traffic.run(
            stage,
            count=max(10, int(cfg.during_rate * 10)),
            mix=mix or cfg.drift_mix,
            exclude=() if task == cfg.opportunity_task else opportunity_excluded(cfg),
            rate=cfg.during_rate,
        )
        run = task_run(ctx.state_dir, task, since)
        if run is None:
            continue
        if run.get("status") == "failed":
            failed = f"retrain run {run.get('run_id')} failed: {run.get('error')}"
            break
        if run.get("status") != "done":
            continue
        redeploy = run.get("redeploy") or {}
        if not run.get("promoted"):
            v = run.get("verdict") or {}
            failed = f"gate {'PASS' if v.get('passed') else 'FAIL'}: {'; '.join(v.get('reasons') or [])}"
            # another run promoted since (e.g. one for another task that also learned this one's
            # live labels, which every run keeps for the tasks without bootstrap labels): its
            # champion is the new one; the task's own run was gated against it
            other = promoted_since(ctx.state_dir, since, serving_version(services), exclude=run.get("run_id"))
            if other is not None and other.get("router_version") != v0:
                swapped, via = other.get("router_version"), other
            break
        want = redeploy.get("serving_version") or run.get("router_version")
        with contextlib.suppress(Exception):
            v = (readyz(services.gateway_url).get("router") or {}).get("version")
            if v and (v == want or (redeploy.get("swapped") and v != v0)):
                swapped = v
                break
        if redeploy and not redeploy.get("swapped"):
            failed = f"promoted but not swapped: {redeploy.get('error')}"
            break
    during = traffic.stage_rows(stage)
    swapped_at = time.time() if swapped else None
    if via is not None:  # it was serving before the task's own run ended: when it was promoted
        swapped_at = min(swapped_at or time.time(), _ts(via.get("updated")))
        print(
            f"      the task's own run was not promoted ({failed}); the champion serving it came from "
            f"run {via.get('run_id')} (tasks {via.get('tasks')}), promoted after the "
            f"{'alert' if step == '5' else 'notice'}",
            flush=True,
        )
        failed = None
    if swapped_at is not None:
        st = stats(during)
        print(
            f"      router hot-swapped {v0} -> {swapped}, "
            f"{round(swapped_at - since, 1)}s after the {'alert' if step == '5' else 'notice'}; "
            f"traffic meanwhile: {st['requests']} requests, {st['errors']} errors",
            flush=True,
        )
    else:
        why = failed or f"no swap within {timeout:.0f}s"
        print(f"      {why}; see {services.trainer.log_path}", flush=True)
    if run is not None:
        v = run.get("verdict") or {}
        print(
            f"      retrain run {run.get('run_id')} (tasks {run.get('tasks')}): gate "
            f"{'PASS' if v.get('passed') else 'FAIL'} ({'; '.join(v.get('reasons') or [])}); timings "
            + ", ".join(f"{k} {x:.1f}" for k, x in (run.get("timings") or {}).items()),
            flush=True,
        )
        run = _run_summary(run)
    out = RetrainWait(during, swapped, swapped_at, run, failed)
    out.via = _run_summary(via) if via is not None else None
    return out


# --------------------------------------------------------------------------- 6


def replay_after(traffic: Traffic, ctx: RunContext, drift_new_task: dict[str, Any]) -> list[Req]:
    """The same drifted mix after the loop; compares the new task with its drift-time numbers."""
    cfg = ctx.cfg
    print(f"[6/{STEPS}] replaying {cfg.after_requests} requests with the same drifted mix ...", flush=True)
    after = traffic.run(
        "after", count=cfg.after_requests, mix=cfg.drift_mix, exclude=opportunity_excluded(cfg)
    )
    b, a_ = drift_new_task, stats(after, task=cfg.new_task)
    print(
        f"      {cfg.new_task}: quality {b['quality']:.3f} during drift -> {a_['quality']:.3f} after "
        f"(GPT-4 {a_['strong_quality']:.3f}); cheap share {100 * b['cheap_share']:.0f}% -> "
        f"{100 * a_['cheap_share']:.0f}%",
        flush=True,
    )
    print(f"      all traffic after: {fmt(stats(after))}", flush=True)
    return after


# --------------------------------------------------------------------------- 7


@dataclass
class OpportunityReplay:
    """Story (b)'s traffic until its savings-opportunity notice, and the notice."""

    rows: list[Req]
    sent: int
    onset: float
    notice: dict[str, Any] | None = None
    notice_ts: float | None = None
    drift_alerts: list[dict[str, Any]] = field(default_factory=list)


def replay_opportunity(
    traffic: Traffic, ctx: RunContext, procs: Processes, services: Services
) -> OpportunityReplay:
    """The opportunity task appears (real recorded answers, no fault): chunks of traffic until
    the streams worker reports its savings-opportunity notice, or the cap is reached; then the
    notice from the alerts topic."""
    cfg = ctx.cfg
    task = cfg.opportunity_task
    print(
        f"[7/{STEPS}] savings opportunity: {task!r} appears (~{100 * cfg.opportunity_share:.0f}% of "
        f"traffic, recorded answers, no fault); waiting for the notice (streams min_outcomes "
        f"{cfg.opportunity_min_outcomes}; gateway explores {100 * cfg.explore_share:.0f}% of its requests "
        f"after {cfg.explore_min_requests}, up to ${cfg.explore_budget_usd}/task/hour) ...",
        flush=True,
    )
    onset, sent = time.time(), 0

    def notice_seen() -> bool:
        return any(is_notice(f) and f.get("task") == task for f in firing_now(services))

    while sent < cfg.opportunity_max_requests and not notice_seen():
        procs.check_alive()
        traffic.run("opportunity", count=cfg.opportunity_chunk, mix=cfg.opportunity_mix)
        sent += cfg.opportunity_chunk
        st = stats(traffic.stage_rows("opportunity"), task=task)
        ex = explore_metrics(services).get("calls", {}).get(task, 0)
        print(
            f"      ... {sent} requests; {task}: {st['requests']} answered, cost ratio "
            f"{1 - st['savings']:.3f}, quality/GPT-4 {st['quality_ratio']:.3f}, {ex:.0f} explored",
            flush=True,
        )
    out = OpportunityReplay(traffic.stage_rows("opportunity"), sent, onset)
    alerts = read_alerts(ctx.kafka_bootstrap, ctx.prefix)
    notices = [a for a in alerts if is_notice(a) and a.get("task") == task and a.get("status") == "firing"]
    out.drift_alerts = [a for a in alerts if a.get("task") == task and not is_notice(a)]
    if not notices:
        print(f"      no opportunity notice for {task}; see {services.streams.log_path}", flush=True)
        return out
    n = notices[0]
    out.notice = {
        k: n.get(k) for k in ("task", "detector", "severity", "status", "summary", "evidence", "ts")
    }
    out.notice_ts = datetime.fromisoformat(n["ts"]).timestamp() if n.get("ts") else time.time()
    print(f"      NOTICE ({n.get('severity')}) {n.get('summary')}", flush=True)
    return out


def explore_metrics(services: Services) -> dict[str, Any]:
    """The gateway's exploration counters (``/metrics``): shadow calls, spend and skips per task."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"calls": {}, "calls_by_outcome": {}, "spend_usd": {}, "skipped": {}}
    try:
        text = httpx.get(
            services.gateway_url + "/metrics",
            headers={"authorization": f"Bearer {services.api_key}"},
            timeout=5,
        ).text
    except httpx.HTTPError:
        return out
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            task = smp.labels.get("task")
            if task is None or not smp.name.endswith("_total"):
                continue
            if smp.name == "switchyard_explore_calls_total":
                out["calls"][task] = out["calls"].get(task, 0) + smp.value
                key = f"{task}|{smp.labels.get('outcome')}"
                out["calls_by_outcome"][key] = out["calls_by_outcome"].get(key, 0) + smp.value
            elif smp.name == "switchyard_explore_spend_usd_total":
                out["spend_usd"][task] = out["spend_usd"].get(task, 0) + smp.value
            elif smp.name == "switchyard_explore_skipped_total":
                key = f"{task}|{smp.labels.get('reason')}"
                out["skipped"][key] = out["skipped"].get(key, 0) + smp.value
    return out


# --------------------------------------------------------------------------- 9


def replay_opportunity_after(traffic: Traffic, ctx: RunContext, before: dict[str, Any]) -> list[Req]:
    """Story (b)'s mix after its new champion serves: the task's cost and quality against before."""
    cfg = ctx.cfg
    task = cfg.opportunity_task
    print(
        f"[9/{STEPS}] replaying {cfg.opportunity_after_requests} requests with {task} in the mix ...",
        flush=True,
    )
    after = traffic.run("after opportunity", count=cfg.opportunity_after_requests, mix=cfg.opportunity_mix)
    a_ = stats(after, task=task)
    print(
        f"      {task}: cost ratio {1 - before['savings']:.3f} -> {1 - a_['savings']:.3f}, quality/GPT-4 "
        f"{before['quality_ratio']:.3f} -> {a_['quality_ratio']:.3f}; cheap share "
        f"{100 * before['cheap_share']:.0f}% -> {100 * a_['cheap_share']:.0f}%",
        flush=True,
    )
    print(f"      all traffic after: {fmt(stats(after))}", flush=True)
    return after


# --------------------------------------------------------------------------- 10


def replay_cache(traffic: Traffic, ctx: RunContext) -> tuple[list[Req], list[Req]]:
    """Story (c): the same traffic (same seed), a share of it near-duplicates of earlier requests
    (repeats, rewordings, and traps whose right answer changes), first with every request opting out
    of the semantic cache, then with the cache on."""
    cfg = ctx.cfg
    print(
        f"[10/{STEPS}] semantic cache: {cfg.cache_requests} requests, "
        f"{100 * cfg.cache_near_duplicates:.0f}% near-duplicates, cache off then on ...",
        flush=True,
    )
    seed = cfg.seed * 1000 + 999
    dups = cfg.cache_near_duplicates
    off = traffic.run("cache off", count=cfg.cache_requests, mix=BASE_MIX, near_duplicates=dups, seed=seed)
    on = traffic.run(
        "cache on", count=cfg.cache_requests, mix=BASE_MIX, near_duplicates=dups, seed=seed, cache=True
    )
    print(f"      cache off: {fmt(stats(off))}", flush=True)
    print(f"      cache on:  {fmt(stats(on))}", flush=True)
    return off, on

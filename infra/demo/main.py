"""``make demo``: run the steps in order (story (a), then story (b), each unless switched off),
assemble the summary, always stop what was started and write the report. Exit code 0 when every
step of the stories that ran is done, 2 when one is not (no alert or notice, no swap), 1 when a
bounded wait failed, 130 when interrupted."""

from __future__ import annotations

import logging
import shutil
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import steps as s
from .processes import DemoError, Processes
from .report import cache_summary, opportunity_targets, print_summary, stats, whole_traffic, write_report
from .settings import ROOT, DemoSettings, RunContext
from .traffic import Traffic


def _mark_failed(status: dict[str, str], why: str) -> None:
    """The first step not yet run is the one that failed."""
    for k, v in status.items():
        if v == "not run":
            status[k] = why
            return


def _drift_story(
    ctx: RunContext,
    procs: Processes,
    services: s.Services,
    traffic: Traffic,
    receiver_bodies: list[Any],
    status: dict[str, str],
    events: dict[str, float],
    summary: dict[str, Any],
) -> None:
    """Story (a), steps 3-6: the new task drifts, a drift alert fires, the loop repairs it."""
    cfg = ctx.cfg
    events["drift starts"] = time.time()
    drift = s.replay_drift(traffic, ctx, procs, services, receiver_bodies)
    summary["drift"] = stats(drift.rows)
    summary["drift_new_task"] = stats(drift.rows, task=cfg.new_task)
    status["3"] = "done"

    alert = s.await_alert(ctx, procs, services, receiver_bodies, drift, events["drift starts"])
    summary["alerts"] = [
        {k: a.get(k) for k in ("task", "detector", "status", "summary", "report_url", "ts")}
        for a in alert.alerts
    ]
    summary["webhook_posts"] = alert.webhook_posts
    if alert.alert_ts is None:
        status["4"] = f"FAILED: no alert after {drift.sent} drift requests; see {services.streams.log_path}"
        status["5"] = "skipped (no alert)"
    else:
        events["drift alert"] = alert.alert_ts
        summary["timeline"] = alert.timeline
        status["4"] = "done"
        summary["alert_webhook_first"] = alert.webhook_first

        task = (alert.alert or {}).get("task") or cfg.new_task
        retrain = s.retrain_and_swap(ctx, procs, services, traffic, alert.alert_ts, task=task)
        summary["during_retrain"] = stats(retrain.rows)
        if retrain.swapped_at is not None:
            events["new champion (drift)"] = retrain.swapped_at
            summary["router_v2"] = retrain.swapped
            summary["alert_to_swap_s"] = round(retrain.swapped_at - alert.alert_ts, 1)
            summary["timeline"].update(
                {
                    "alert_to_serving_s": summary["alert_to_swap_s"],
                    "onset_to_serving_s": round(retrain.swapped_at - events["drift starts"], 1),
                }
            )
            status["5"] = "done"
        else:
            why = retrain.failed or f"NOT COMPLETED within {cfg.retrain_timeout_s:.0f}s"
            status["5"] = f"{why}; see {services.trainer.log_path}"
        if retrain.retrain_run is not None:
            summary["retrain_run"] = retrain.retrain_run

    after = s.replay_after(traffic, ctx, summary["drift_new_task"])
    summary["after"] = stats(after)
    summary["after_new_task"] = stats(after, task=cfg.new_task)
    summary["after_other_tasks"] = stats(after, not_task=cfg.new_task)
    status["6"] = "done" if status["5"] == "done" else "done (without a new router)"


def _opportunity_story(
    ctx: RunContext,
    procs: Processes,
    services: s.Services,
    traffic: Traffic,
    status: dict[str, str],
    events: dict[str, float],
    summary: dict[str, Any],
) -> None:
    """Story (b), steps 7-9: a task on which the cheap tier is good appears; the router sends it
    to the expensive tier, the savings-opportunity notice fires, exploration labels cheap answers,
    and the loop's new champion routes it cheaply."""
    cfg = ctx.cfg
    task = cfg.opportunity_task
    opp: dict[str, Any] = {"task": task, "router_before": s.serving_version(services)}
    summary["opportunity"] = opp
    seen = s.replay_opportunity(traffic, ctx, procs, services)
    events["opportunity task appears"] = seen.onset
    opp["requests_before_notice"] = seen.sent
    opp["before"] = stats(seen.rows, task=task)
    opp["before_all"] = stats(seen.rows)
    opp["drift_alerts_on_task"] = [
        {k: a.get(k) for k in ("detector", "status", "summary", "ts")} for a in seen.drift_alerts
    ]
    opp["exploration_at_notice"] = s.explore_metrics(services)
    if seen.notice_ts is None:
        status["7"] = (
            f"FAILED: no opportunity notice for {task} after {seen.sent} requests; "
            f"see {services.streams.log_path}"
        )
        status["8"] = "skipped (no notice)"
    else:
        events["opportunity detected"] = seen.notice_ts
        opp["notice"] = seen.notice
        opp["onset_to_notice_s"] = round(seen.notice_ts - seen.onset, 1)
        status["7"] = "done"
        retrain = s.retrain_and_swap(
            ctx,
            procs,
            services,
            traffic,
            seen.notice_ts,
            task=task,
            stage="during opportunity retrain",
            mix=cfg.opportunity_mix,
            step="8",
        )
        opp["during_retrain"] = stats(retrain.rows, task=task)
        opp["during_retrain_all"] = stats(retrain.rows)
        if retrain.retrain_run is not None:
            opp["retrain_run"] = retrain.retrain_run
        if retrain.via is not None:
            opp["champion_run"] = retrain.via
        if retrain.swapped_at is not None:
            events["new champion (opportunity)"] = retrain.swapped_at
            opp["router_after"] = retrain.swapped
            opp["notice_to_serving_s"] = round(retrain.swapped_at - seen.notice_ts, 1)
            opp["onset_to_serving_s"] = round(retrain.swapped_at - seen.onset, 1)
            status["8"] = "done"
        else:
            why = retrain.failed or f"NOT COMPLETED within {cfg.opportunity_timeout_s:.0f}s"
            status["8"] = f"{why}; see {services.trainer.log_path}"
    after = s.replay_opportunity_after(traffic, ctx, opp["before"])
    opp["after"] = stats(after, task=task)
    opp["after_all"] = stats(after)
    opp["after_other_tasks"] = stats(after, not_task=task)
    opp["exploration"] = s.explore_metrics(services)
    opp["exploration"]["cap_usd_per_task_hour"] = cfg.explore_budget_usd
    opp["targets"] = opportunity_targets(opp)
    status["9"] = "done" if status["8"] == "done" else "done (without a new router)"


def run(cfg: DemoSettings, procs: Processes, run_id: str, log_dir: Path, report_dir: Path) -> int:
    """The whole demo; returns the exit code. The report is written whatever happened."""
    from streams.testing import WebhookReceiver

    t_start = time.time()
    ctx = RunContext.create(cfg, run_id, log_dir)
    status = {f"{i}": "not run" for i in range(1, s.STEPS + 1)}
    stories = (
        (cfg.drift_story, s.DRIFT_STEPS),
        (cfg.opportunity_story, s.OPPORTUNITY_STEPS),
        (cfg.cache_story, s.CACHE_STEPS),
    )
    for on, keys in stories:
        if not on:
            status.update({k: "skipped (story off)" for k in keys})
    events: dict[str, float] = {}
    summary: dict[str, Any] = {
        "run_id": run_id,
        "topic_prefix": ctx.prefix,
        "registered_model": ctx.model_name,
        "new_task": cfg.new_task if cfg.drift_story else None,
        "opportunity_task": cfg.opportunity_task if cfg.opportunity_story else None,
        "stories": {"drift": cfg.drift_story, "opportunity": cfg.opportunity_story},
        "logs": str(log_dir),
    }
    traffic: Traffic | None = None
    receiver = WebhookReceiver()
    try:
        summary["initial_train_s"] = s.train_initial(ctx, procs)
        status["1"] = "done"

        services = s.start_services(ctx, procs, receiver.url)
        summary["router_v1"] = services.router_version
        summary["start_services_s"] = services.seconds
        status["2"] = "done"

        traffic = Traffic(services.gateway_url + "/v1", ctx.api_key, services.emulator_url, ctx.data_dir, cfg)
        summary["steady"] = stats(s.replay_steady(traffic, ctx))
        if cfg.drift_story:
            _drift_story(ctx, procs, services, traffic, receiver.bodies, status, events, summary)
        if cfg.opportunity_story:
            _opportunity_story(ctx, procs, services, traffic, status, events, summary)
        if cfg.cache_story:
            off, on = s.replay_cache(traffic, ctx)
            summary["cache"] = cache_summary(off, on)
            status["10"] = "done"
        summary["failed_requests"] = sum(1 for r in traffic.rows if not r.ok)
        # the traffic of the last replay after the loop(s): the whole-traffic figures
        last_stage = "after opportunity" if cfg.opportunity_story else "after"
        summary["whole_traffic"] = whole_traffic(
            [r for r in traffic.rows if r.stage == last_stage], cfg.new_task if cfg.drift_story else None
        )
        # every alert and notice of the run (a notice may fire on another task too)
        alerts = s.read_alerts(ctx.kafka_bootstrap, ctx.prefix)
        summary["all_alerts"] = [
            {k: a.get(k) for k in ("task", "detector", "severity", "status", "ts")}
            | {"why": (a.get("evidence") or {}).get("why")}
            for a in alerts
        ]
        if "opportunity" in summary:  # over the whole run: none expected while quality holds
            summary["opportunity"]["drift_alerts_on_task"] = [
                {k: a.get(k) for k in ("detector", "status", "summary", "ts")}
                for a in alerts
                if a.get("task") == cfg.opportunity_task and not s.is_notice(a)
            ]
        summary["loop_runs"] = s.loop_runs(ctx.state_dir)
        wanted = [k for k in status if k != str(s.STEPS)]
        return_code = 0 if all(status[k].startswith(("done", "skipped (story off)")) for k in wanted) else 2
        return_code = 2 if any(status[k].startswith("done (without") for k in wanted) else return_code
    except DemoError as exc:
        print(f"ERROR: {exc}", flush=True)
        summary["error"] = str(exc)
        _mark_failed(status, f"FAILED: {exc}")
        return_code = 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        summary["error"] = "interrupted"
        _mark_failed(status, "interrupted")
        return_code = 130
    finally:
        receiver.close()
        print("      stopping the processes the demo started ...", flush=True)
        procs.stop_all()
        shutil.rmtree(ctx.ray_dir, ignore_errors=True)

    print(f"[{s.STEPS}/{s.STEPS}] writing the report ...", flush=True)
    summary["total_s"] = round(time.time() - t_start, 1)
    status[str(s.STEPS)] = "done"
    labelled = {f"{k}. {s.STEP_NAMES[k]}": v for k, v in status.items()}
    rows = traffic.rows if traffic else []
    rb_tasks = traffic.routerbench_tasks() if traffic else set()
    path = write_report(report_dir, run_id, rows, events, summary, labelled, cfg, rb_tasks)
    print_summary(labelled, summary, cfg, path, log_dir)
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

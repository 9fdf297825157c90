"""``make demo``: run the steps in order, assemble the summary, always stop what was started and
write the report. Exit code 0 when every step is done, 2 when one is not (no alert, no swap), 1
when a bounded wait failed, 130 when interrupted."""

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
from .report import print_summary, stats, write_report
from .settings import ROOT, DemoSettings, RunContext
from .traffic import Traffic


def _mark_failed(status: dict[str, str], why: str) -> None:
    """The first step not yet run is the one that failed."""
    for k, v in status.items():
        if v == "not run":
            status[k] = why
            return


def run(cfg: DemoSettings, procs: Processes, run_id: str, log_dir: Path, report_dir: Path) -> int:
    """The whole demo; returns the exit code. The report is written whatever happened."""
    from streams.testing import WebhookReceiver

    t_start = time.time()
    ctx = RunContext.create(cfg, run_id, log_dir)
    status = {f"{i}": "not run" for i in range(1, 8)}
    events: dict[str, float] = {}
    summary: dict[str, Any] = {
        "run_id": run_id,
        "topic_prefix": ctx.prefix,
        "registered_model": ctx.model_name,
        "new_task": cfg.new_task,
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
        events["drift starts"] = time.time()
        drift = s.replay_drift(traffic, ctx, procs, services, receiver.bodies)
        summary["drift"] = stats(drift.rows)
        summary["drift_new_task"] = stats(drift.rows, task=cfg.new_task)
        status["3"] = "done"

        alert = s.await_alert(ctx, procs, services, receiver.bodies, drift, events["drift starts"])
        summary["alerts"] = [
            {k: a.get(k) for k in ("task", "detector", "status", "summary", "report_url", "ts")}
            for a in alert.alerts
        ]
        summary["webhook_posts"] = alert.webhook_posts
        if alert.alert_ts is None:
            status["4"] = (
                f"FAILED: no alert after {drift.sent} drift requests; see {services.streams.log_path}"
            )
            status["5"] = "skipped (no alert)"
        else:
            events["alert"] = alert.alert_ts
            summary["timeline"] = alert.timeline
            status["4"] = "done"
            summary["alert_webhook_first"] = alert.webhook_first

            retrain = s.retrain_and_swap(ctx, procs, services, traffic, alert.alert_ts)
            summary["during_retrain"] = stats(retrain.rows)
            if retrain.swapped_at is not None:
                events["new router deployed"] = retrain.swapped_at
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
                status["5"] = (
                    f"NOT COMPLETED within {cfg.retrain_timeout_s:.0f}s; see {services.trainer.log_path}"
                )
            if retrain.retrain_run is not None:
                summary["retrain_run"] = retrain.retrain_run

        after = s.replay_after(traffic, ctx, summary["drift_new_task"])
        summary["after"] = stats(after)
        summary["after_new_task"] = stats(after, task=cfg.new_task)
        summary["after_other_tasks"] = stats(after, not_task=cfg.new_task)
        status["6"] = "done" if status["5"] == "done" else "done (without a new router)"
        return_code = 0 if all(status[k].startswith("done") for k in "123456") else 2
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

    print("[7/7] writing the report ...", flush=True)
    summary["total_s"] = round(time.time() - t_start, 1)
    status["7"] = "done"
    labelled = {f"{k}. {s.STEP_NAMES[k]}": v for k, v in status.items()}
    rows = traffic.rows if traffic else []
    rb_tasks = traffic.routerbench_tasks() if traffic else set()
    path = write_report(report_dir, run_id, rows, events, summary, labelled, cfg.new_task, rb_tasks)
    print_summary(labelled, summary, cfg.new_task, path, log_dir)
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

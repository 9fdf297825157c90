"""``make demo`` end to end: the whole loop on the real stack (Kafka, MLflow, Ray Serve, Faust,
the emulator), unattended, with every process it started gone afterwards (~4-5 min here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(1200)
def test_demo_closes_the_loop(kafka_bootstrap: str, mlflow_uri: str, data_dir: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SWITCHYARD_DATA_DIR": str(data_dir),
        "SWITCHYARD_DEMO_REPORT_ROOT": str(tmp_path),
        "SWITCHYARD_DEMO_AFTER_REQUESTS": "160",
    }
    res = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "infra.demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1100
    )
    out = res.stdout + res.stderr
    reports = list(tmp_path.glob("*/summary.json"))
    assert len(reports) == 1, out[-4000:]
    summary = json.loads(reports[0].read_text())
    assert res.returncode == 0, f"steps: {summary['steps']}\n{out[-4000:]}"
    assert all(v == "done" for v in summary["steps"].values()), summary["steps"]

    # the alert named the new task, reached the webhook and has its evidently report
    firing = [a for a in summary["alerts"] if a["status"] == "firing"]
    assert any(a["task"] == "professional_law" for a in firing), summary["alerts"]
    assert summary["webhook_posts"] >= 1
    report = next(a["report_url"] for a in firing if a["task"] == "professional_law")
    assert Path(report.removeprefix("file://")).is_file()

    # a new router was promoted and is serving; no request failed, during the swap either
    assert summary["router_v2"] and summary["router_v2"] != summary["router_v1"]
    assert summary["retrain_run"]["verdict"]["passed"] is True
    for phase in ("steady", "drift", "during_retrain", "after"):
        assert summary[phase]["errors"] == 0, (phase, summary[phase])

    # quality on the new task is back near GPT-4's, and the other tasks still save money
    assert summary["after_new_task"]["quality_ratio"] > summary["drift_new_task"]["quality_ratio"]
    assert summary["after_new_task"]["quality_ratio"] >= 0.9
    assert summary["after_other_tasks"]["savings"] > 0.2

    # the timeline the README reports: onset -> alert -> new champion serving, in that order
    tl = summary["timeline"]
    assert 0 < tl["onset_to_alert_s"] < tl["onset_to_serving_s"], tl
    assert tl["new_task_labelled_before_alert"] > 0, tl
    md = (reports[0].parent / "README.md").read_text()
    assert "## Per stage" in md and "## Timeline" in md

    for png in ("quality.png", "cost.png", "tiers.png"):
        assert (reports[0].parent / png).stat().st_size > 1000

    # nothing the demo started is still running
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout  # noqa: S607
    assert summary["run_id"] not in ps
    assert f"/tmp/sy-demo-{summary['run_id'][-6:]}" not in ps  # the gateway's Ray processes

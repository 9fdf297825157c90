"""Per-task aggregates, hard-query mining and the per-task monitor (detectors -> alerts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.contracts import AlertStatus, CallEvent, OutcomeEvent, prompt_hash
from streams import windows
from streams.drift import TaskMonitor
from streams.mining import mine_call, mine_outcome, top2_margin
from streams.settings import QualityDetectorConfig, StreamsSettings

CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def outcome(i: int, accepted: bool, model: str = CHEAP, task: str = "gsm8k", **kw) -> OutcomeEvent:
    tier = "budget" if model == CHEAP else "frontier"
    base = dict(
        request_id=f"r{i}",
        task=task,
        prompt_hash=prompt_hash(str(i)),
        chosen_model=model,
        tier=tier,
        mode="route",
        predicted=0.7,
        score=float(accepted),
        accepted=accepted,
        cost_usd=0.01,
        latency_ms=100 + i % 10 * 100,
    )
    return OutcomeEvent(**{**base, **kw})


def test_window_aggregates_and_summary() -> None:
    outs = [outcome(i, i % 4 != 0) for i in range(80)] + [
        outcome(100 + i, True, STRONG, escalated=True) for i in range(20)
    ]
    agg = windows.add_outcomes(None, outs[:50], "budget")
    agg = windows.add_outcomes(agg, outs[50:], "budget")
    s = windows.summarise(agg)
    assert s["events"] == 100
    assert s["acceptance_by_model"][CHEAP] == {"events": 80, "acceptance": 0.75}
    assert s["acceptance_by_tier"]["frontier"]["acceptance"] == 1.0
    assert s["cheap_tier_share"] == 0.8 and s["escalation_rate"] == 0.2
    assert s["cost_per_request_usd"] == pytest.approx(0.01)
    assert s["latency_ms"]["p50"] in (500, 750) and s["latency_ms"]["p99"] == 1000
    assert s["calibration"]["predicted"] == pytest.approx(0.7) and s["calibration"]["observed"] == 0.8
    assert windows.summarise(None)["acceptance"] is None


def test_mining() -> None:
    base = dict(
        request_id="r",
        task="t",
        prompt_hash=prompt_hash("p"),
        requested_model="switchyard/auto",
        mode="route",
    )
    assert mine_call(CallEvent(**base, scores={CHEAP: 0.9, STRONG: 0.5}, chosen_model=CHEAP), 0.05) is None
    close = mine_call(CallEvent(**base, scores={CHEAP: 0.81, STRONG: 0.8}, chosen_model=CHEAP), 0.05)
    assert close is not None and close.reason == "low_margin"
    esc = mine_call(
        CallEvent(**base, scores={CHEAP: 0.9, STRONG: 0.5}, chosen_model=STRONG, escalated=True), 0.05
    )
    assert esc is not None and esc.reason == "escalated"
    assert top2_margin({"a": 0.5}) is None
    neg = mine_outcome(outcome(1, False), "budget")
    assert neg is not None and neg.reason == "negative_feedback" and neg.feedback_score == 0.0
    assert mine_outcome(outcome(1, True), "budget") is None
    assert mine_outcome(outcome(1, False, STRONG), "budget") is None


def _settings(tmp_path) -> StreamsSettings:
    return StreamsSettings(state_dir=tmp_path, quality=QualityDetectorConfig(reference_events=200))


def test_monitor_drift_gives_one_alert_one_retrain_and_a_report_then_resolves(tmp_path) -> None:
    rng = np.random.default_rng(1)
    mon = TaskMonitor(_settings(tmp_path), {}, {}, reference={"gsm8k": {CHEAP: 0.7}})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    stable = [outcome(i, bool(a)) for i, a in enumerate(rng.random(1000) < 0.7)]
    quiet = [mon.on_outcomes("gsm8k", stable[k : k + 100], now) for k in range(0, 1000, 100)]
    assert all(not r.alerts for r in quiet)
    drifted = [outcome(2000 + i, bool(a)) for i, a in enumerate(rng.random(600) < 0.55)]
    results = [mon.on_outcomes("gsm8k", drifted[k : k + 50], now) for k in range(0, 600, 50)]
    alerts = [a for r in results for a in r.alerts]
    retrain = [q for r in results for q in r.retrain]
    assert [(a.status, a.detector) for a in alerts] == [(AlertStatus.FIRING, "quality")]
    assert alerts[0].evidence["subject"] == CHEAP and alerts[0].severity == "critical"
    assert alerts[0].suggested_action and "gsm8k" in alerts[0].summary
    assert len(retrain) == 1 and retrain[0].tasks == ["gsm8k"] and retrain[0].alert_id == alerts[0].alert_id
    report = alerts[0].report_url
    assert report and report.startswith("file://")
    path = report[len("file://") :]
    assert path.startswith(str(tmp_path)) and "<html" in open(path, encoding="utf-8").read(2000).lower()
    back = [outcome(5000 + i, bool(a)) for i, a in enumerate(rng.random(800) < 0.72)]
    res = [mon.on_outcomes("gsm8k", back[k : k + 100], now) for k in range(0, 800, 100)]
    resolved = [a for r in res for a in r.alerts]
    assert [(a.status, a.alert_id) for a in resolved] == [(AlertStatus.RESOLVED, alerts[0].alert_id)]


def test_monitor_state_survives_a_restart(tmp_path) -> None:
    rng = np.random.default_rng(2)
    state, alert_store = {}, {}
    first = TaskMonitor(_settings(tmp_path), state, alert_store, write_reports=False)
    first.on_outcomes("t", [outcome(i, bool(a), task="t") for i, a in enumerate(rng.random(400) < 0.8)])
    learned = state["t"]["quality"][CHEAP]
    assert learned["ref_sum"] / learned["ref_n"] == pytest.approx(0.8, abs=0.06)
    assert learned["p0"] < learned["ref_sum"] / learned["ref_n"]  # the conservative bound
    second = TaskMonitor(_settings(tmp_path), state, alert_store, write_reports=False)
    res = second.on_outcomes(
        "t", [outcome(i, bool(a), task="t") for i, a in enumerate(rng.random(600) < 0.5)]
    )
    assert [a.status for a in res.alerts] == [AlertStatus.FIRING]
    assert "learned reference" in res.alerts[0].summary and res.alerts[0].evidence["reference_learned"]
    third = TaskMonitor(_settings(tmp_path), state, alert_store, write_reports=False)
    more = third.on_outcomes(
        "t", [outcome(i, bool(a), task="t") for i, a in enumerate(rng.random(100) < 0.5)]
    )
    assert more.alerts == []  # still firing: not paged twice


def test_monitor_alert_window_with_outcomes_out_of_time_order(tmp_path) -> None:
    # outcomes from several partitions arrive out of timestamp order within a batch
    rng = np.random.default_rng(6)
    mon = TaskMonitor(_settings(tmp_path), {}, {}, reference={"gsm8k": {CHEAP: 0.9}}, write_reports=False)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    outs = [
        outcome(i, bool(a), ts=base.replace(second=59 - i % 60)) for i, a in enumerate(rng.random(300) < 0.5)
    ]
    res = mon.on_outcomes("gsm8k", outs)
    assert [a.status for a in res.alerts] == [AlertStatus.FIRING]
    [req] = res.retrain
    assert req.window_start == base.replace(second=0) and req.window_end == base.replace(second=59)


def test_a_drift_retrain_reads_from_the_change_point_not_the_tipping_batch(tmp_path) -> None:
    # story (a) of the demo alone: the retrain request used to start at the batch that tipped the
    # detector, so the loop read a few seconds of labels; it starts at the change point now
    rng = np.random.default_rng(8)
    mon = TaskMonitor(_settings(tmp_path), {}, {}, reference={"law": {CHEAP: 0.5}}, write_reports=False)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    outs = [
        outcome(i, bool(a), task="law", ts=base + timedelta(seconds=i))
        for i, a in enumerate(rng.random(400) < 0.05)
    ]
    reqs = []
    for k in range(0, 400, 10):
        reqs += mon.on_outcomes("law", outs[k : k + 10]).retrain
    [req] = reqs
    assert req.window_start <= base + timedelta(seconds=5)  # the drop was there from the start
    assert req.window_end - req.window_start > timedelta(seconds=10)  # more than the tipping batch


def test_an_input_drift_alert_resolves_after_a_restart(tmp_path) -> None:
    from faust.serializers import codecs

    from streams.drift import FEATURE_COLUMNS
    from streams.settings import InputDriftConfig

    settings = StreamsSettings(
        state_dir=tmp_path,
        input_drift=InputDriftConfig(reference_size=200, current_size=200, check_every=200),
    )
    tables: dict[str, dict] = {"detectors": {}, "alerts": {}, "input_drift": {}}
    rng = np.random.default_rng(7)

    def rows(n: int, shift: float) -> list[dict[str, float]]:
        return [
            dict(zip(FEATURE_COLUMNS, map(float, rng.normal(shift, 1.0, 6)), strict=True)) for _ in range(n)
        ]

    def worker_monitor(input_store: dict | None = None) -> TaskMonitor:
        """The worker's monitor, built on its tables as recovered from their changelogs (JSON)."""
        for name, table in tables.items():
            tables[name] = {k: codecs.loads("json", codecs.dumps("json", v)) for k, v in table.items()}
        return TaskMonitor(
            settings,
            tables["detectors"],
            tables["alerts"],
            write_reports=False,
            input_store=tables["input_drift"] if input_store is None else input_store,
        )

    first = worker_monitor()
    assert not first.add_features("t", rows(200, 0.0))  # the reference window
    assert first.add_features("t", rows(200, 3.0))  # the traffic changed: a check is due
    fired = first.check_input("t").alerts
    assert [(a.status, a.detector) for a in fired] == [(AlertStatus.FIRING, "input_drift")]

    # what the bug did: a monitor rebuilt without the input-drift state can never resolve it
    forgetful = worker_monitor(input_store={})
    forgetful.add_features("t", rows(400, 0.0))
    assert forgetful.check_input("t").alerts == []
    assert [a["detector"] for a in forgetful.firing()] == ["input_drift"]  # firing for ever

    # restart: the monitor is rebuilt from the tables; the traffic is back to normal
    again = worker_monitor()
    assert again.add_features("t", rows(200, 0.0))
    resolved = again.check_input("t").alerts
    assert [(a.status, a.alert_id) for a in resolved] == [(AlertStatus.RESOLVED, fired[0].alert_id)]
    assert again.firing() == []


def test_the_worker_keeps_input_drift_state_in_a_changelogged_table(tmp_path) -> None:
    from services.contracts.settings import KafkaSettings
    from streams.app import create_app

    app = create_app(StreamsSettings(state_dir=tmp_path, web_enabled=False), KafkaSettings())
    w = app.switchyard
    assert w.monitor.input_store is w.tables["input_drift"]
    assert w.tables["input_drift"].changelog_topic.get_topic_name().endswith("-input-drift-changelog")


def test_a_new_task_on_the_strong_tier_gives_one_notice_that_never_pages_and_a_retrain(tmp_path) -> None:
    mon = TaskMonitor(_settings(tmp_path), {}, {}, cheap_tier="budget")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    strong = [outcome(i, True, STRONG, task="world_religions", predicted=None) for i in range(200)]
    results = [mon.on_outcomes("world_religions", strong[k : k + 50], now) for k in range(0, 200, 50)]
    alerts = [a for r in results for a in r.alerts]
    retrain = [q for r in results for q in r.retrain]
    assert [(a.detector, a.severity, a.status) for a in alerts] == [
        ("opportunity", "info", AlertStatus.FIRING)
    ]
    assert alerts[0].evidence["why"] == "missing" and "not a page" in alerts[0].summary
    assert (
        len(retrain) == 1 and retrain[0].reason == "opportunity" and retrain[0].tasks == ["world_religions"]
    )
    # the retrained router sends the task to the cheap tier: the notice resolves, no quality alert
    cheap = [outcome(500 + i, True, CHEAP, task="world_religions", predicted=None) for i in range(300)]
    after = [mon.on_outcomes("world_religions", cheap[k : k + 50], now) for k in range(0, 300, 50)]
    closed = [a for r in after for a in r.alerts]
    assert [(a.detector, a.status) for a in closed] == [("opportunity", AlertStatus.RESOLVED)]


def test_the_opportunity_retrain_window_covers_the_evidence_before_the_notice(tmp_path) -> None:
    mon = TaskMonitor(_settings(tmp_path), {}, {}, cheap_tier="budget")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    strong = [
        outcome(i, True, STRONG, task="world_religions", predicted=None, ts=t0 + timedelta(seconds=i))
        for i in range(100)
    ]
    batches = [strong[k : k + 20] for k in range(0, 100, 20)]
    [req] = [q for b in batches for q in mon.on_outcomes("world_religions", b).retrain]
    # the loop collects from window_start: the whole detector window, not the batch that fired
    assert req.window_start == strong[0].ts and req.window_end == strong[59].ts


def test_shadow_samples_feed_no_quality_detector_and_no_window(tmp_path) -> None:
    mon = TaskMonitor(_settings(tmp_path), {}, {}, reference={"gsm8k": {CHEAP: 0.9}}, cheap_tier="budget")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    bad_shadows = [outcome(i, False, mode="explore") for i in range(400)]
    res = mon.on_outcomes("gsm8k", bad_shadows, now)
    assert not [a for a in res.alerts if a.detector == "quality"]  # never served: no quality page
    agg = windows.add_outcomes(None, bad_shadows, "budget")
    assert windows.summarise(agg)["events"] == 0 and windows.summarise(agg)["shadow_samples"] == 400
    assert mine_outcome(bad_shadows[0], "budget") is None

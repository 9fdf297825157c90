"""Drift detectors on synthetic streams: they catch a shift and stay quiet on a stable stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streams.detectors import CalibrationDrift, InputDrift, QualityCusum, _lindley
from streams.settings import CalibrationDetectorConfig, InputDriftConfig, QualityDetectorConfig

CFG = QualityDetectorConfig()


def _delay(p0: float, drop: float, seed: int) -> int | None:
    rng = np.random.default_rng(seed)
    det = QualityCusum(CFG, p0=p0)
    assert det.update(rng.random(1000) < p0) == []
    changes = det.update(rng.random(3000) < p0 - drop)
    fires = [c for c in changes if c.kind == "fire"]
    return fires[0].index + 1 if fires else None


@pytest.mark.parametrize("p0", [0.5, 0.68, 0.85])
def test_cusum_catches_a_15_point_drop_within_300_events(p0: float) -> None:
    delays = [_delay(p0, 0.15, seed) for seed in range(40)]
    assert all(d is not None for d in delays)
    assert np.median(delays) <= 300


@pytest.mark.parametrize("p0", [0.3, 0.68, 0.9])
def test_cusum_is_quiet_on_100k_stable_events(p0: float) -> None:
    rng = np.random.default_rng(7)
    det = QualityCusum(CFG, p0=p0)
    assert [c for c in det.update(rng.random(100_000) < p0) if c.kind == "fire"] == []
    assert not det.firing


def test_cusum_fires_once_then_resolves_when_quality_returns() -> None:
    rng = np.random.default_rng(3)
    det = QualityCusum(CFG, p0=0.7)
    drift = det.update(rng.random(600) < 0.55)
    assert [c.kind for c in drift] == ["fire"]
    ev = drift[0].evidence
    assert ev["reference_acceptance"] == pytest.approx(0.7)
    assert ev["observed_acceptance"] < 0.6
    back = det.update(rng.random(600) < 0.7)
    assert [c.kind for c in back] == ["resolve"]
    assert not det.firing


def test_cusum_dates_the_change_point_across_batches() -> None:
    # a drop that starts at t=1000 and is fed in small batches: the alert's evidence dates the run
    # since the estimated change point near the drop, not at the batch that tipped the statistic
    rng = np.random.default_rng(11)
    det = QualityCusum(CFG, p0=0.8)
    stable = rng.random(1000) < 0.8
    det.update(stable, np.arange(1000.0))
    drop = rng.random(600) < 0.3
    fired = []
    for k in range(0, 600, 20):
        fired += det.update(drop[k : k + 20], 1000.0 + np.arange(k, k + 20))
    [fire] = [c for c in fired if c.kind == "fire"]
    ts = fire.evidence["change_point_ts"]
    assert 990.0 <= ts <= 1010.0  # the estimate: the last restart of the statistic near the drop
    assert fire.evidence["events_since_change_point"] > 20  # more than the tipping batch
    # the state carries it, and a batch without times leaves it unknown rather than wrong
    again = QualityCusum.from_state(CFG, det.to_state())
    assert again.run_start == det.run_start
    with pytest.raises(ValueError, match="one time per observation"):
        det.update([True, False], [1.0])


def test_cusum_learns_its_reference_from_the_first_events() -> None:
    rng = np.random.default_rng(5)
    det = QualityCusum(QualityDetectorConfig(reference_events=400))
    det.update(rng.random(399) < 0.8)
    assert det.p0 is None
    det.update(rng.random(1) < 0.8)
    assert det.p0 == pytest.approx(0.8, abs=0.05)


def test_cusum_state_round_trip_equals_one_pass() -> None:
    rng = np.random.default_rng(11)
    x = rng.random(3000) < np.r_[np.full(1500, 0.7), np.full(1500, 0.5)]
    one = QualityCusum(CFG, p0=0.7)
    whole = [(c.kind) for c in one.update(x)]
    det_state = None
    kinds = []
    for chunk in np.array_split(x, 37):
        det = QualityCusum.from_state(CFG, det_state)
        kinds += [c.kind for c in det.update(chunk)]
        det_state = det.to_state()
    assert kinds == whole == ["fire"]
    assert det_state["stat"] == pytest.approx(one.to_state()["stat"])
    assert det_state["recover"] == pytest.approx(one.to_state()["recover"])


def test_lindley_matches_the_recursion() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=500)
    s, ref = 1.5, []
    for v in x:
        s = max(0.0, s + v)
        ref.append(s)
    assert np.allclose(_lindley(1.5, x), ref)


def test_calibration_quiet_when_calibrated_and_fires_on_a_gap() -> None:
    rng = np.random.default_rng(4)
    cfg = CalibrationDetectorConfig()
    det = CalibrationDrift(cfg)
    for _ in range(20):
        p = rng.uniform(0.4, 0.95, 100)
        assert det.update(p, (rng.random(100) < p).astype(float)) == []
    fired = []
    for _ in range(10):
        p = rng.uniform(0.4, 0.95, 100)
        fired += det.update(p, (rng.random(100) < p - 0.25).astype(float))
    assert [c.kind for c in fired] == ["fire"]
    assert fired[0].evidence["predicted_minus_observed"] > cfg.max_gap
    resolved = []
    for _ in range(10):
        p = rng.uniform(0.4, 0.95, 100)
        resolved += det.update(p, (rng.random(100) < p).astype(float))
    assert [c.kind for c in resolved] == ["resolve"]
    restored = CalibrationDrift.from_state(cfg, det.to_state())
    assert restored.gap() == det.gap()


def test_input_drift_with_evidently() -> None:
    rng = np.random.default_rng(9)
    cfg = InputDriftConfig(reference_size=200, current_size=200, check_every=200)
    cols = ["chosen_score", "prompt_chars"]
    det = InputDrift(cfg, cols)
    det.add(
        [
            {"chosen_score": v, "prompt_chars": c}
            for v, c in zip(rng.beta(5, 2, 400), rng.normal(400, 80, 400), strict=True)
        ]
    )
    assert det.due()
    same = det.check()
    assert not same.drifted
    assert det.transition(same) is None
    det.add(
        [
            {"chosen_score": v, "prompt_chars": c}
            for v, c in zip(rng.beta(2, 5, 200), rng.normal(900, 80, 200), strict=True)
        ]
    )
    shifted = det.check()
    assert shifted.drifted and shifted.share == 1.0
    change = det.transition(shifted)
    assert change is not None and change.kind == "fire"
    assert det.transition(shifted) is None  # already firing


def _learned(**kw) -> QualityCusum:
    return QualityCusum(QualityDetectorConfig(**kw))


def test_a_learned_reference_that_came_out_high_does_not_page_on_a_stable_stream() -> None:
    """300 lucky first events put the estimate 5 points above the truth: a plain plug-in
    reference then pages on a stable stream; the learned reference (lower bound, keeps learning)
    stays quiet for 100,000 events and converges on the truth."""
    rng = np.random.default_rng(21)
    first = rng.random(300) < 0.75  # the truth is 0.70
    stable = rng.random(100_000) < 0.70
    naive = _learned(reference_z=0.0, reference_lag=10**9)  # learn once, use the estimate as is
    naive.update(first)
    assert any(c.kind == "fire" for c in naive.update(stable))
    det = _learned()
    det.update(first)
    assert det.p0 < det.p_hat  # the conservative bound
    fires = [c for k in range(0, 100_000, 500) for c in det.update(stable[k : k + 500]) if c.kind == "fire"]
    assert fires == []
    assert det.p_hat == pytest.approx(0.70, abs=0.01)
    assert det.p_hat - det.p0 < 0.01  # the bound closes in as evidence grows


@pytest.mark.parametrize("p", [0.55, 0.8])
def test_a_learned_reference_catches_a_15_point_drop_and_does_not_learn_it(p: float) -> None:
    delays = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        det = _learned()
        for _ in range(0, 3000, 50):
            det.update(rng.random(50) < p)
        learned = det.p_hat
        drifted = rng.random(3000) < p - 0.15
        fired = None
        for k in range(0, 3000, 10):
            if any(c.kind == "fire" for c in det.update(drifted[k : k + 10])):
                fired = k + 10
                break
        assert fired is not None
        delays.append(fired)
        assert det.p_hat == pytest.approx(learned, abs=0.01)  # the drop did not join the reference
        assert det.evidence()["reference_learned"] is True
    assert np.median(delays) <= 300


def test_learned_state_round_trip_equals_one_pass() -> None:
    rng = np.random.default_rng(12)
    x = rng.random(4000) < np.r_[np.full(2500, 0.8), np.full(1500, 0.6)]
    one = _learned()
    whole = [c.kind for k in range(0, 4000, 100) for c in one.update(x[k : k + 100])]
    state, kinds = None, []
    for k in range(0, 4000, 100):
        det = QualityCusum.from_state(CFG, state)
        kinds += [c.kind for c in det.update(x[k : k + 100])]
        state = det.to_state()
    assert kinds == whole == ["fire"]
    assert state == one.to_state()


def test_a_configured_reference_learns_nothing() -> None:
    rng = np.random.default_rng(13)
    det = QualityCusum(CFG, p0=0.7)
    det.update(rng.random(5000) < 0.72)
    assert det.p0 == pytest.approx(0.7) and det.p_hat is None and not det.learned
    again = QualityCusum.from_state(CFG, det.to_state())
    assert again.p0 == pytest.approx(0.7) and not again.learned


def test_input_drift_takes_rows_or_columns_alike_and_refuses_a_broken_batch() -> None:
    from streams.drift import FEATURE_COLUMNS, FeatureBatch, TaskMonitor
    from streams.settings import StreamsSettings

    rng = np.random.default_rng(10)
    scores = [{"a": float(x), "b": float(y)} for x, y in rng.random((700, 2))]
    prompts = ["x" * int(n) for n in rng.integers(10, 900, 700)]
    by_rows, by_cols = (TaskMonitor(StreamsSettings(), {}, {}, write_reports=False) for _ in range(2))
    from streams.drift import call_features

    due_rows = due_cols = False
    for k in range(0, 700, 70):  # batches of 70 calls: the reference (300) fills mid-batch
        batch = FeatureBatch()
        rows = []
        for s, p in zip(scores[k : k + 70], prompts[k : k + 70], strict=True):
            batch.add(s, "a", p, 0)
            rows.append(call_features(s, "a", p, 0))
        due_rows |= by_rows.add_features("t", rows)
        due_cols |= by_cols.add_features("t", json.loads(json.dumps(batch.record())))  # as on the topic
    a, b = by_rows._input["t"], by_cols._input["t"]
    assert due_rows and due_cols and a.reference_rows == b.reference_rows == 300 and a.current_rows == 300
    for c in FEATURE_COLUMNS:
        assert np.array_equal(np.asarray(a.reference[c]), np.asarray(b.reference[c]), equal_nan=True)
        assert np.array_equal(np.asarray(a.current[c]), np.asarray(b.current[c]), equal_nan=True)
    assert a.check().columns == b.check().columns
    before = {c: list(b.current[c]) for c in FEATURE_COLUMNS}
    with pytest.raises(ValueError):  # a column shorter than the batch: refused whole
        by_cols.add_features("t", {"n": 1, "columns": {"chosen_score": [0.1], "margin": [0.1, 0.2]}})
    assert {c: list(b.current[c]) for c in FEATURE_COLUMNS} == before
    with pytest.raises(ValueError):
        by_cols.add_features("t", {"n": 1, "columns": {"chosen_score": ["not a number"]}})
    with pytest.raises(KeyError):
        by_cols.add_features("t", {"rows": []})

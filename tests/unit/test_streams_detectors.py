"""Drift detectors on synthetic streams: they catch a shift and stay quiet on a stable stream."""

from __future__ import annotations

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

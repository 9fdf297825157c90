"""Router artefacts: round trip, and every way a load can fail gives RouterLoadError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.router.artifact import (
    CALIBRATION_FILE,
    HEAD_FILE,
    MANIFEST,
    RouterLoadError,
    content_version,
    load_router,
    save_router,
    smoke_check,
)
from services.router.calibration import Calibration, ThresholdTable
from services.router.encoder import EncoderConfig

MODELS = ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
VOCAB = ["gsm8k", "high_school_mathematics"]


def _save(path: Path, seed: int = 0, cascade: tuple | None = None) -> str:
    rng = np.random.default_rng(seed)
    d = 384 + len(VOCAB)
    params = {
        "w1": rng.normal(size=(d, 8)) * 0.1,
        "b1": np.zeros(8),
        "w2": rng.normal(size=(8, 2)),
        "b2": np.zeros(2),
    }
    table = ThresholdTable(targets=[0.5, 1.0], thresholds=[0.3, 0.0], candidates=MODELS, n=10)
    cal = Calibration(models=MODELS, strong_model=MODELS[0], global_table=table)
    return save_router(
        path,
        kind="mlp",
        models=MODELS,
        task_vocab=VOCAB,
        head_params=params,
        calibration=cal,
        encoder=EncoderConfig(max_length=64),
        cascade=cascade,
    ).version


def test_round_trip_and_version_follows_content(tmp_path: Path) -> None:
    v1 = _save(tmp_path / "a")
    r = load_router(str(tmp_path / "a"))
    assert r.version == v1 and r.models == MODELS
    emb = np.random.default_rng(3).normal(size=(3, 384)).astype(np.float32)
    p = r.scores_from_embeddings(emb, ["gsm8k", None, "unseen-task"])
    assert p.shape == (3, 2) and ((p > 0) & (p < 1)).all()
    assert _save(tmp_path / "b", seed=1) != v1  # other weights, other version


def test_bad_refs(tmp_path: Path) -> None:
    with pytest.raises(RouterLoadError, match="neither an existing directory"):
        load_router(str(tmp_path / "nope"))
    with pytest.raises(RouterLoadError, match="empty"):
        load_router("  ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RouterLoadError, match="no manifest.json"):
        load_router(str(tmp_path / "empty"))


def test_corrupt_or_tampered_files(tmp_path: Path) -> None:
    _save(tmp_path / "r")
    head = tmp_path / "r" / HEAD_FILE
    data = bytearray(head.read_bytes())
    data[-5] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(RouterLoadError, match="corrupt or was modified"):
        load_router(str(tmp_path / "r"))

    _save(tmp_path / "m")
    (tmp_path / "m" / CALIBRATION_FILE).unlink()
    with pytest.raises(RouterLoadError, match="missing calibration.json"):
        load_router(str(tmp_path / "m"))

    _save(tmp_path / "j")
    (tmp_path / "j" / MANIFEST).write_text("{not json")
    with pytest.raises(RouterLoadError, match="invalid"):
        load_router(str(tmp_path / "j"))

    # a consistent checksum over garbage weights still fails cleanly
    _save(tmp_path / "g")
    from services.router.encoder import file_sha256

    (tmp_path / "g" / HEAD_FILE).write_bytes(b"garbage")
    man = json.loads((tmp_path / "g" / MANIFEST).read_text())
    man["files"][HEAD_FILE] = file_sha256(tmp_path / "g" / HEAD_FILE)
    man["version"] = content_version(man["kind"], man["models"], man["files"])
    (tmp_path / "g" / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(RouterLoadError, match="cannot read weights"):
        load_router(str(tmp_path / "g"))


def _zero_weights(path: Path, keep_version: bool) -> None:
    """Edit an artefact's head to zeros and re-hash its manifest, as a tamperer would."""
    from services.router.artifact import _save_arrays
    from services.router.encoder import file_sha256

    man = json.loads((path / MANIFEST).read_text())
    d = 384 + len(VOCAB)
    _save_arrays(
        path / HEAD_FILE,
        {"w1": np.zeros((d, 8)), "b1": np.zeros(8), "w2": np.zeros((8, 2)), "b2": np.zeros(2)},
    )
    man["files"][HEAD_FILE] = file_sha256(path / HEAD_FILE)
    if not keep_version:
        man["version"] = content_version(man["kind"], man["models"], man["files"])
    (path / MANIFEST).write_text(json.dumps(man))


def test_an_edited_artefact_cannot_keep_its_version_id(tmp_path: Path) -> None:
    champion = _save(tmp_path / "c")
    _zero_weights(tmp_path / "c", keep_version=True)
    with pytest.raises(RouterLoadError, match="does not match the artefact's content"):
        load_router(str(tmp_path / "c"))
    _zero_weights(tmp_path / "c", keep_version=False)
    assert load_router(str(tmp_path / "c")).version != champion  # loads, but never as the champion


def test_smoke_check_refuses_degenerate_and_out_of_range_scores(tmp_path: Path, monkeypatch) -> None:
    _save(tmp_path / "z")
    router = load_router(str(tmp_path / "z"))
    flat = [{MODELS[0]: 0.5, MODELS[1]: 0.5}] * 4  # what zero weights give for every prompt
    monkeypatch.setattr(router, "scores", lambda queries: flat[: len(queries)])
    with pytest.raises(RouterLoadError, match="same scores for every smoke query"):
        smoke_check(router)
    varied = [{MODELS[0]: 0.9 - i / 10, MODELS[1]: 0.2 + i / 10} for i in range(4)]
    monkeypatch.setattr(router, "scores", lambda queries: varied[: len(queries)])
    assert smoke_check(router) == varied
    router.manifest.training["score_ranges"] = {MODELS[0]: [0.95, 0.99], MODELS[1]: [0.0, 1.0]}
    with pytest.raises(RouterLoadError, match="outside the range its training recorded"):
        smoke_check(router)


@pytest.mark.slow
def test_smoke_check_scores_real_text(tmp_path: Path) -> None:
    _save(tmp_path / "s")
    router = load_router(str(tmp_path / "s"), device="cpu")
    out = smoke_check(router)
    assert len(out) == 4 and all(set(row) == set(MODELS) for row in out)
    with pytest.raises(ValueError):
        from services.router.base import Query

        router.scores([Query("   ", None)])


def test_cascade_table_travels_in_the_artefact_and_reaches_the_route(tmp_path: Path) -> None:
    from services.gateway.routing import RouteResult, _with_cascade
    from services.router.artifact import CascadeSpec
    from services.router.cascade import FEATURE_NAMES

    table = ThresholdTable(targets=[0.9, 1.0], thresholds=[0.4, 0.8], candidates=MODELS, n=50)
    k = len(FEATURE_NAMES)
    spec = CascadeSpec(model=MODELS[1], use_embedding=False, feature_names=list(FEATURE_NAMES), table=table)
    cparams = {"coef": np.zeros(k), "intercept": np.zeros(1), "mean": np.zeros(k), "std": np.ones(k)}
    _save(tmp_path / "c", cascade=(spec, cparams))
    r = load_router(str(tmp_path / "c"))
    assert r.cascade_threshold(MODELS[1], 0.95) == pytest.approx(0.6)
    assert r.cascade_threshold(MODELS[0], 0.95) is None  # no table for another model
    res = RouteResult({}, r.version, MODELS[0], MODELS, 0.1, 0.0, False)
    out = _with_cascade(r, res, 0.9)
    assert out.cascade_model == MODELS[1] and out.cascade_accept == pytest.approx(0.4)
    assert r.answer_scores(["q"], ["a"], MODELS[1])[0] == pytest.approx(0.5)  # no encoder pass needed

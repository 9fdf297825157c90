"""The static-embedding encoder backend (model2vec): vectors, cache keys, caching, artefacts.

A tiny synthetic static model (a WordPiece vocabulary of a few words and random vectors) keeps
these tests fast; the one real distillation of MiniLM is marked ``slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.router import static_backend
from services.router.artifact import RouterLoadError, load_router, save_router, smoke_check
from services.router.calibration import Calibration, ThresholdTable
from services.router.encoder import Encoder, EncoderConfig, weights_sha256
from services.router.settings import RouterSettings
from services.router.static_backend import (
    TOKENIZER_FILE,
    VECTORS_FILE,
    StaticFiles,
    StaticModelError,
    ensure_static_files,
)

MODELS = ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
VOCAB = ["gsm8k", "high_school_mathematics"]
WORDS = (
    "what is the capital of france natalia sold clips to her friends in april and then half as many "
    "may how did altogether which following a prime number write python function reverse string "
    "answer 21 27 29 33 48 ? , . :"
).split()
DIM = 8


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok.to_str()


def _write_model(dest: Path, seed: int = 0) -> StaticFiles:
    """A synthetic static model in the backend's file format."""
    from safetensors.numpy import save_file

    dest.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_json()
    n = len(json.loads(tok)["model"]["vocab"])
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float16)
    files = StaticFiles(dest / VECTORS_FILE, dest / TOKENIZER_FILE)
    save_file({static_backend.TENSOR: vectors}, str(files.vectors))
    files.tokenizer.write_text(tok, encoding="utf-8")
    return files


def _cfg(**kw: object) -> EncoderConfig:
    return EncoderConfig(backend="static", static_pca_dims=DIM, **kw)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> StaticFiles:
    return _write_model(tmp_path_factory.mktemp("static"))


@pytest.fixture(scope="module")
def enc(model_files: StaticFiles) -> Encoder:
    return Encoder(_cfg(), static_files=model_files)


PROMPTS = [
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April",
    "Which of the following is a prime number? 21 27 29 33",
    "write a python function",
]


def test_vectors_are_normalised_of_the_configured_dim_and_deterministic(enc: Encoder) -> None:
    v = enc.encode(PROMPTS)
    assert v.shape == (len(PROMPTS), DIM) and v.dtype == np.float32 and enc.dim == DIM
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(v, enc.encode(PROMPTS))
    # a prompt's vector does not depend on its batch
    np.testing.assert_array_equal(enc.encode(PROMPTS[2:3])[0], v[2])
    assert enc.encode([]).shape == (0, DIM)
    assert not enc.encode(["zzzz qqqq"]).any()  # no known token: a zero row, as model2vec gives


def test_matches_model2vec_encode_without_truncation(enc: Encoder) -> None:
    ref = enc.static.model.encode(PROMPTS, max_length=None)
    np.testing.assert_allclose(enc.encode(PROMPTS), ref, atol=1e-6)


def test_head_and_tail_truncation(model_files: StaticFiles) -> None:
    short = Encoder(_cfg(max_length=6, head_tokens=2), static_files=model_files)  # 4 content tokens
    text = "what is the capital of france natalia sold"
    full = Encoder(_cfg(max_length=0), static_files=model_files)
    ids = full.static.token_ids([text])[0]
    assert len(ids) == 8
    assert short.static.token_ids([text])[0] == ids[:2] + ids[-2:]
    assert Encoder(_cfg(max_length=128), static_files=model_files).static.token_ids([text])[0] == ids


def test_cache_key_differs_from_torch_and_onnx_and_by_distil_params() -> None:
    sha = "ab" * 32
    keys = {
        EncoderConfig().key(sha),
        EncoderConfig(backend="onnx", quantize_int8=True).key(sha),
        EncoderConfig(backend="static").key(sha),
        EncoderConfig(backend="static", static_pca_dims=0).key(sha),
        EncoderConfig(backend="static", static_sif=0.0).key(sha),
    }
    assert len(keys) == 5
    # torch/onnx manifests keep their shape; the static one records its distil parameters
    assert "static_pca_dims" not in EncoderConfig(backend="onnx").to_dict()
    assert EncoderConfig(**EncoderConfig(backend="static").to_dict()).dim == 256
    assert EncoderConfig(backend="static", static_pca_dims=0).dim == 384
    with pytest.raises(ValueError, match="int8"):
        EncoderConfig(backend="static", quantize_int8=True)
    assert RouterSettings(backend="static").backend == "static"


def test_cache_distils_once_and_rebuilds_a_corrupt_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_distill(model_dir: Path, pca_dims: int, sif: float) -> tuple[np.ndarray, str]:
        calls.append((pca_dims, sif))
        n = len(json.loads(_tokenizer_json())["model"]["vocab"])
        return np.ones((n, DIM), np.float16), _tokenizer_json()

    monkeypatch.setattr(static_backend, "distill", fake_distill)
    kw = {"weights_sha256": "cd" * 32, "model_dir": tmp_path, "cache_dir": tmp_path / "c"}
    files = ensure_static_files(_cfg(), **kw)
    assert ensure_static_files(_cfg(), **kw) == files and len(calls) == 1
    other = ensure_static_files(_cfg(static_sif=0.0), **kw)
    assert other != files and len(calls) == 2
    data = bytearray(files.vectors.read_bytes())
    data[-3] ^= 0xFF
    files.vectors.write_bytes(bytes(data))
    ensure_static_files(_cfg(), **kw)
    assert len(calls) == 3  # the checksum sidecar caught it: distilled again


def _save(path: Path, files: StaticFiles | None, encoder: EncoderConfig | None = None) -> str:
    rng = np.random.default_rng(0)
    d = DIM + len(VOCAB)
    params = {
        "w1": rng.normal(size=(d, 8)),
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
        encoder=encoder or _cfg(),
        static_model=files,
    ).version


def test_artefact_round_trip_carries_the_static_model(tmp_path: Path, model_files: StaticFiles) -> None:
    version = _save(tmp_path / "r", model_files)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert {VECTORS_FILE, TOKENIZER_FILE} <= set(manifest["files"])
    assert manifest["encoder"]["backend"] == "static" and manifest["encoder"]["static_pca_dims"] == DIM
    r = load_router(str(tmp_path / "r"))
    assert r.version == version and r.encoder.dim == DIM
    p = r.score_batch(PROMPTS, [None, "gsm8k", "high_school_mathematics", "unknown"])
    assert p.shape == (len(PROMPTS), 2) and ((p > 0) & (p < 1)).all()
    np.testing.assert_allclose(p[0], list(r.scores_from_embeddings(r.embed(PROMPTS[:1]), [None])[0]))
    assert len(smoke_check(r)) == 4
    assert r.score_batch([]).shape == (0, 2)
    with pytest.raises(ValueError, match="length"):
        r.score_batch(PROMPTS, [None])


def test_static_artefact_loads_and_scores_without_torch(tmp_path: Path, model_files: StaticFiles) -> None:
    _save(tmp_path / "r", model_files)
    code = (
        "import sys\n"
        "from services.router.artifact import load_router\n"
        f"r = load_router({str(tmp_path / 'r')!r})\n"
        "p = r.score_batch(['What is the capital of France?', 'write a python function'])\n"
        "assert p.shape == (2, 2), p.shape\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout


def test_corrupt_or_missing_static_model_is_a_clear_error(tmp_path: Path, model_files: StaticFiles) -> None:
    _save(tmp_path / "c", model_files)
    vec = tmp_path / "c" / VECTORS_FILE
    data = bytearray(vec.read_bytes())
    data[-4] ^= 0xFF
    vec.write_bytes(bytes(data))
    with pytest.raises(RouterLoadError, match=f"{VECTORS_FILE} is corrupt or was modified"):
        load_router(str(tmp_path / "c"))

    _save(tmp_path / "m", model_files)
    (tmp_path / "m" / TOKENIZER_FILE).unlink()
    with pytest.raises(RouterLoadError, match=f"missing {TOKENIZER_FILE}"):
        load_router(str(tmp_path / "m"))

    # a manifest that does not list the static files (edited by hand, version recomputed)
    from services.router.artifact import content_version

    _save(tmp_path / "u", model_files)
    mpath = tmp_path / "u" / "manifest.json"
    m = json.loads(mpath.read_text())
    for name in (VECTORS_FILE, TOKENIZER_FILE):
        del m["files"][name]
    m["version"] = content_version(m["kind"], m["models"], m["files"])
    mpath.write_text(json.dumps(m))
    with pytest.raises(RouterLoadError, match="uses the static encoder but its manifest lists no"):
        load_router(str(tmp_path / "u"))

    # checksums fine, content not a static model: caught at load, not at the first request
    bad = tmp_path / "bad"
    files = _write_model(bad)
    files.tokenizer.write_text("{not json", encoding="utf-8")
    _save(tmp_path / "t", files)
    with pytest.raises(RouterLoadError, match="static tokenizer"):
        load_router(str(tmp_path / "t"))


def test_static_model_files_are_required_and_spaces_never_mix(
    tmp_path: Path, model_files: StaticFiles
) -> None:
    with pytest.raises(ValueError, match="static model files"):
        _save(tmp_path / "x", None)
    with pytest.raises(ValueError, match="static model files"):
        _save(tmp_path / "y", model_files, encoder=EncoderConfig())
    _save(tmp_path / "r", model_files)
    # a static router ignores the serving overrides meant for transformer routers
    assert load_router(str(tmp_path / "r"), backend="onnx").encoder_config.backend == "static"
    assert (
        load_router(str(tmp_path / "r"), backend="static", quantize_int8=True).encoder_config.backend
        == "static"
    )
    # a head of the wrong width for the static dimension is refused
    _save(tmp_path / "w", model_files, encoder=EncoderConfig(backend="static", static_pca_dims=DIM + 1))
    with pytest.raises(RouterLoadError):
        load_router(str(tmp_path / "w"))


def test_missing_file_for_the_encoder_is_an_encoder_error(tmp_path: Path) -> None:
    from services.router.encoder import EncoderError

    with pytest.raises(EncoderError, match="missing"):
        Encoder(_cfg(), static_files=StaticFiles(tmp_path / "v.safetensors", tmp_path / "t.json"))
    with pytest.raises(StaticModelError, match="dimension"):
        files = _write_model(tmp_path / "d")
        static_backend.load_static_model(files, dim=DIM * 2)


@pytest.mark.slow
def test_real_distillation_is_offline_and_reproducible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distils the bundled MiniLM with model2vec (no hub access): ~30 CPU-s."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = EncoderConfig(backend="static", static_pca_dims=64)
    enc = Encoder(cfg, static_cache_dir=tmp_path)
    v = enc.encode(PROMPTS)
    assert v.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    again = static_backend.distill(enc.model_dir, 64, cfg.static_sif)[0]
    np.testing.assert_array_equal(again, enc.static.model.embedding.astype(np.float16))
    assert enc.weights_sha256() == weights_sha256()


def test_cheap_router_api(tmp_path: Path, model_files: StaticFiles) -> None:
    from services.router.cheap import load_cheap_router

    _save(tmp_path / "s", model_files)
    cheap = load_cheap_router(str(tmp_path / "s"))
    p = cheap.score_batch(PROMPTS)
    assert p.shape == (len(PROMPTS), len(cheap.models)) and ((p > 0) & (p < 1)).all()
    # a MiniLM router is not a cheap stage (refused before any encoder is loaded)
    rng = np.random.default_rng(0)
    d = 384 + len(VOCAB)
    params = {
        "w1": rng.normal(size=(d, 4)),
        "b1": np.zeros(4),
        "w2": rng.normal(size=(4, 2)),
        "b2": np.zeros(2),
    }
    table = ThresholdTable(targets=[0.5, 1.0], thresholds=[0.3, 0.0], candidates=MODELS, n=10)
    cal = Calibration(models=MODELS, strong_model=MODELS[0], global_table=table)
    save_router(
        tmp_path / "t",
        kind="mlp",
        models=MODELS,
        task_vocab=VOCAB,
        head_params=params,
        calibration=cal,
        encoder=EncoderConfig(backend="onnx", quantize_int8=True),
    )
    with pytest.raises(RouterLoadError, match="not a cheap stage"):
        load_cheap_router(str(tmp_path / "t"))
    # and cannot be switched into the static space at serving
    with pytest.raises(RouterLoadError, match="different embedding space"):
        load_router(str(tmp_path / "t"), backend="static")

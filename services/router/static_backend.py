"""Static-embedding backend of the query encoder: MiniLM distilled into a token-vector table.

`model2vec <https://github.com/MinishLab/model2vec>`_ distils the bundled all-MiniLM-L6-v2 offline:
every token of its vocabulary goes through the transformer once, the outputs are reduced by PCA
(``static_pca_dims``; 0 keeps all 384 dimensions) and weighted by a Zipf-estimated SIF
coefficient. A prompt's vector is then the mean of its tokens' vectors, L2-normalised: one
tokenizer pass and one table lookup, no transformer at serving (numpy + ``tokenizers`` +
model2vec's light runtime; no torch).

Truncation keeps the project's semantics: ``max_length - 2`` content tokens (MiniLM's budget
without [CLS]/[SEP], which a static model does not add), the first ``head_tokens`` and the rest
from the end. ``max_length = 0`` keeps every token.

Files: ``static-vectors.safetensors`` (tensor ``embeddings``, float16, (vocab, dim)) and
``static-tokenizer.json`` (the distilled tokenizer; unused tokens are removed, so ids differ
from MiniLM's). They are cached under ``<state dir>/cache/static`` keyed by the encoder weights'
sha256, the distil parameters and :data:`DISTILL_VERSION` (each written to a temporary name,
renamed, with a ``.sha256`` sidecar, as the ONNX cache does) and copied into every router
artefact trained on them, so serving never distils.

Distillation needs torch + transformers (training only) and ``skeletoken``; model2vec's
``distill`` extra pins ``transformers<5.4``, which this project does not install: the extra's
code is used with the project's transformers, checked by ``tests/unit/test_router_static.py``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .onnx_backend import _publish, _read_verified, _tmp_name

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import EncoderConfig

log = logging.getLogger(__name__)

# Bump when the distillation recipe changes: cached models and embedding caches are then rebuilt.
DISTILL_VERSION = "m2v010-v1"
VECTORS_FILE = "static-vectors.safetensors"
TOKENIZER_FILE = "static-tokenizer.json"
TENSOR = "embeddings"


class StaticModelError(RuntimeError):
    """The static model could not be distilled, read or verified."""


@dataclass(frozen=True)
class StaticFiles:
    """The two files of a distilled static model."""

    vectors: Path
    tokenizer: Path


def static_cache_dir(state_dir: Path | str = ".state") -> Path:
    """Where distilled static models are cached under a state dir: ``<state_dir>/cache/static``."""
    return Path(state_dir) / "cache" / "static"


def cached_files(cache_dir: Path, config: EncoderConfig, weights_sha256: str) -> StaticFiles:
    """Where the cached static model of these encoder weights and distil parameters lives."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", config.name)
    stem = (
        f"{safe}-{weights_sha256[:16]}-pca{config.static_pca_dims}-sif{config.static_sif:g}-{DISTILL_VERSION}"
    )
    return StaticFiles(Path(cache_dir) / f"{stem}.safetensors", Path(cache_dir) / f"{stem}.tokenizer.json")


def distill(model_dir: Path, pca_dims: int, sif: float) -> tuple[np.ndarray, str]:
    """Distil the transformer in ``model_dir`` (offline, on CPU so it is reproducible):
    returns the float16 token-vector table and the distilled tokenizer as JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from model2vec.distill import distill_from_model
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise StaticModelError(
            f"distilling a static model needs torch, transformers and skeletoken: {exc}"
        ) from exc
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise StaticModelError(f"cannot load the encoder to distil from {model_dir}: {exc}") from exc
    try:
        sm = distill_from_model(
            model,
            tok,
            device="cpu",
            pca_dims=pca_dims or None,
            sif_coefficient=sif or None,
            quantize_to="float16",
        )
    except Exception as exc:  # model2vec / skeletoken raise many types
        raise StaticModelError(
            f"model2vec could not distil {model_dir}: {type(exc).__name__}: {exc}"
        ) from exc
    return np.asarray(sm.embedding, dtype=np.float16), sm.tokenizer.to_str()


def _write_cache(files: StaticFiles, vectors: np.ndarray, tokenizer_json: str) -> None:
    from safetensors.numpy import save_file

    files.vectors.parent.mkdir(parents=True, exist_ok=True)
    tmp_v = _tmp_name(files.vectors, ".tmp")
    tmp_t = _tmp_name(files.tokenizer, ".tmp")
    try:
        save_file({TENSOR: np.ascontiguousarray(vectors, dtype=np.float16)}, str(tmp_v))
        tmp_t.write_text(tokenizer_json, encoding="utf-8")
        _publish(tmp_t, files.tokenizer)  # the tokenizer first: a reader needs both, vectors last
        _publish(tmp_v, files.vectors)
    finally:
        tmp_v.unlink(missing_ok=True)
        tmp_t.unlink(missing_ok=True)


def ensure_static_files(
    config: EncoderConfig,
    *,
    weights_sha256: str,
    model_dir: Path,
    cache_dir: Path | None = None,
) -> StaticFiles:
    """The cached static model of ``config`` (distilled now when missing or corrupt)."""
    files = cached_files(Path(cache_dir) if cache_dir else static_cache_dir(), config, weights_sha256)
    if _read_verified(files.vectors) is not None and _read_verified(files.tokenizer) is not None:
        return files
    log.info(
        "distilling a static model from %s (pca %s, sif %g)",
        config.name,
        config.static_pca_dims,
        config.static_sif,
    )
    vectors, tok = distill(model_dir, config.static_pca_dims, config.static_sif)
    _write_cache(files, vectors, tok)
    return files


def load_static_model(files: StaticFiles, *, dim: int | None = None) -> Any:
    """A model2vec ``StaticModel`` over the two files (no truncation in the tokenizer: the
    encoder truncates head + tail itself); raises :class:`StaticModelError`."""
    from model2vec import StaticModel
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    for f in (files.vectors, files.tokenizer):
        if not Path(f).is_file():
            raise StaticModelError(f"static model file {f} is missing")
    try:
        arrays = load_file(str(files.vectors))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise StaticModelError(f"cannot read static vectors {Path(files.vectors).name}: {exc}") from exc
    vectors = arrays.get(TENSOR)
    if vectors is None or vectors.ndim != 2 or not np.isfinite(vectors).all():
        raise StaticModelError(f"{Path(files.vectors).name} holds no finite 2-d {TENSOR!r} tensor")
    if dim is not None and vectors.shape[1] != dim:
        raise StaticModelError(f"{Path(files.vectors).name} has dimension {vectors.shape[1]}, expected {dim}")
    try:
        tokenizer = Tokenizer.from_file(str(files.tokenizer))
    except Exception as exc:  # tokenizers raises a plain Exception for bad JSON
        raise StaticModelError(f"cannot read static tokenizer {Path(files.tokenizer).name}: {exc}") from exc
    try:
        return StaticModel(
            vectors=vectors.astype(np.float32), tokenizer=tokenizer, normalize=True, max_length=None
        )
    except ValueError as exc:  # vocabulary size != rows of the table
        raise StaticModelError(f"static model does not fit its tokenizer: {exc}") from exc


class StaticEncoder:
    """Prompts → L2-normalised mean of the distilled token vectors, head + tail truncated."""

    def __init__(self, config: EncoderConfig, files: StaticFiles) -> None:
        self.config = config
        self.files = files
        self.model = load_static_model(files, dim=config.dim)
        self._table = np.ascontiguousarray(self.model.embedding, dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self._table.shape[1])

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (model2vec's tokenizer), head + tail truncated."""
        ids = self.model.tokenize(list(texts))
        if self.config.max_length <= 0:
            return ids
        body = max(self.config.max_length - 2, 1)
        head = min(self.config.head_tokens, body)
        return [x if len(x) <= body else x[:head] + x[len(x) - (body - head) :] for x in ids]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, dim); a text with no known token gives a zero row (as model2vec does)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.token_ids(texts)):
            if ids:
                v = self._table[ids].mean(axis=0)
                n = float(np.sqrt(v @ v))
                out[i] = v / n if n > 0 else v
        return out

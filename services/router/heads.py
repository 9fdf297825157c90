"""Router heads: from query features to one logit per model (numpy inference, no pickle).

Features are ``[embedding (384), task one-hot (known tasks)]``; an unknown task is all zeros.
Kinds (RouteLLM-style name registry, :data:`HEADS`):

- ``random``: a deterministic pseudo-random score per query (the baseline).
- ``knn``: similarity-weighted k nearest neighbours over the embeddings (labels smoothed
  towards the model's prior).
- ``mf``: matrix factorisation, RouteLLM's best router: ``w · (v_m ⊙ P x) + b_m``.
- ``mlp``: a classifier with one head per model over a shared hidden layer (on frozen or
  fine-tuned encoder embeddings).

Weights are plain float32 arrays (saved as safetensors by :mod:`services.router.artifact`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

EPS = 1e-4


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def task_features(tasks: Sequence[str | None], vocab: Sequence[str]) -> np.ndarray:
    """One-hot task tags over ``vocab``; unknown or missing tasks give a zero row."""
    index = {t: i for i, t in enumerate(vocab)}
    out = np.zeros((len(tasks), len(vocab)), dtype=np.float32)
    for r, t in enumerate(tasks):
        if t is not None and t in index:
            out[r, index[t]] = 1.0
    return out


def features(embeddings: np.ndarray, tasks: Sequence[str | None], vocab: Sequence[str]) -> np.ndarray:
    """Router input: embedding ++ task one-hot."""
    return np.concatenate([embeddings.astype(np.float32), task_features(tasks, vocab)], axis=1)


class Head:
    """Base class: ``logits(x) -> (n, n_models)``; ``params`` are the arrays to persist."""

    kind: ClassVar[str] = ""
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: dict[str, np.ndarray], **options: object) -> None:
        missing = [k for k in self.required if k not in params]
        if missing:
            raise ValueError(f"{self.kind} head lacks weights {missing}")
        self.params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
        self.options = dict(options)

    def logits(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, n_in: int, n_models: int) -> None:
        """Raise ``ValueError`` when the weights do not fit the declared shapes."""
        probe = self.logits(np.zeros((1, n_in), dtype=np.float32))
        if probe.shape != (1, n_models):
            raise ValueError(f"{self.kind} head gives shape {probe.shape[1:]}, expected ({n_models},)")


class RandomHead(Head):
    """Uniform pseudo-random scores, deterministic per query (hash of its features)."""

    kind = "random"
    required = ("n_models",)

    def logits(self, x: np.ndarray) -> np.ndarray:
        m = int(self.params["n_models"][0])
        seed = int(self.options.get("seed", 0))
        out = np.zeros((len(x), m), dtype=np.float32)
        for r, row in enumerate(x):
            h = hashlib.blake2b(row.tobytes() + seed.to_bytes(8, "little"), digest_size=8).digest()
            out[r] = np.random.default_rng(int.from_bytes(h, "little")).uniform(0.02, 0.98, m)
        return logit(out)


class KNNHead(Head):
    """Similarity-weighted kNN over unit-norm embeddings; NaN labels are ignored per model."""

    kind = "knn"
    required = ("vectors", "labels", "prior")

    def logits(self, x: np.ndarray) -> np.ndarray:
        vecs, labels, prior = self.params["vectors"], self.params["labels"], self.params["prior"]
        k = int(self.options.get("k", 32))
        temp = float(self.options.get("temperature", 0.05))
        strength = float(self.options.get("prior_strength", 2.0))
        emb = x[:, : vecs.shape[1]]
        sims = emb @ vecs.T
        k = min(k, vecs.shape[0])
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, nn, axis=1)
        w = np.exp((s - s.max(axis=1, keepdims=True)) / temp)  # (n, k)
        lab = labels[nn]  # (n, k, M)
        have = ~np.isnan(lab)
        num = np.einsum("nk,nkm->nm", w, np.where(have, lab, 0.0))
        den = np.einsum("nk,nkm->nm", w, have.astype(np.float32))
        w_norm = w.sum(axis=1, keepdims=True)
        # Shrink towards the prior with a pseudo-count relative to the neighbourhood weight.
        p = (num + strength * w_norm / k * prior) / (den + strength * w_norm / k)
        return logit(p)


class MFHead(Head):
    """Matrix factorisation: project the query, multiply with each model's embedding."""

    kind = "mf"
    required = ("proj", "model_emb", "w", "bias")

    def logits(self, x: np.ndarray) -> np.ndarray:
        q = x @ self.params["proj"]  # (n, r)
        return (q[:, None, :] * self.params["model_emb"][None]) @ self.params["w"] + self.params["bias"]


class MLPHead(Head):
    """A shared hidden layer (ReLU) and one logit per model."""

    kind = "mlp"
    required = ("w1", "b1", "w2", "b2")

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(x @ self.params["w1"] + self.params["b1"], 0.0)
        return h @ self.params["w2"] + self.params["b2"]


class FinetuneHead(MLPHead):
    """The MLP head of a fine-tuned encoder (its layers travel in the artefact's
    ``encoder.safetensors``; see :mod:`training.finetune`)."""

    kind = "finetune"


HEADS: dict[str, type[Head]] = {h.kind: h for h in (RandomHead, KNNHead, MFHead, MLPHead, FinetuneHead)}


def make_head(kind: str, params: dict[str, np.ndarray], options: dict | None = None) -> Head:
    """Build a head by its registry name."""
    try:
        cls = HEADS[kind]
    except KeyError:
        raise ValueError(f"unknown router head {kind!r} (known: {sorted(HEADS)})") from None
    return cls(params, **(options or {}))

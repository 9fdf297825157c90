"""The cheap router stage: a router artefact trained on the static encoder (model2vec).

Its heads, calibration and threshold tables are its own: static vectors live in another space
(and dimension) than MiniLM's, so they cannot share the production router's heads. It is a
separate artefact in the usual format (``switchyard train router --backend static``), carrying
the distilled model, so it is trained, evaluated, registered, promoted and hot-swapped like any
router, and loads with numpy + tokenizers + model2vec only (no torch). See docs/router.md,
"The static encoder".

    cheap = load_cheap_router("models:/switchyard-router-cheap@champion")  # or a directory
    probs = cheap.score_batch(prompts)            # (n, len(cheap.models)), calibrated P(acceptable)
    decision = cheap.policy(catalog).decide(...)  # the same policy API as the full router
"""

from __future__ import annotations

from typing import Any

from .artifact import LoadedRouter, RouterLoadError, load_router


def load_cheap_router(ref: str, *, tracking_uri: str | None = None, **options: Any) -> LoadedRouter:
    """Load a static-encoder router (a directory or an MLflow URI) and warm it up, so the first
    request pays no load; :class:`RouterLoadError` if the artefact is not a static-encoder
    router or is broken. ``options`` go to :func:`load_router` (e.g. ``cache_size`` is not one:
    set ``router.cache_size`` after loading; 0 turns the LRU off)."""
    router = load_router(ref, tracking_uri=tracking_uri, **options)
    if router.encoder_config.backend != "static":
        raise RouterLoadError(
            f"router {router.version} uses the {router.encoder_config.backend} encoder, not the static "
            "one: it is not a cheap stage"
        )
    try:
        router.score_batch(["warm up"])
    except Exception as exc:  # a broken head or calibration: refuse it here, not on a request
        raise RouterLoadError(f"router {router.version} failed to score: {exc}") from exc
    return router

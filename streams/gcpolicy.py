"""Garbage-collector policy of the streams worker (``SWITCHYARD_STREAMS_GC_FREEZE``, ``..._GC_GEN0``).

The worker allocates several short-lived objects per record (Faust events and messages, pydantic
models, dicts), so CPython's cyclic collector runs thousands of times per minute, and each full
(generation 2) pass walks every tracked object of the process: evidently, pandas, plotly, Faust
and the join table. Measured on the throughput benchmark (100,000 requests, default thresholds
``(700, 10, 10)``): ~11 s of collection in ~53 s of worker CPU, 8 s of it in full passes.

:func:`apply` moves everything alive after start-up (modules, the app) into the permanent
generation (``gc.freeze()``, the collector never walks it again) and raises the generation-0
threshold, so young collections are rarer and fewer objects survive into older generations.
Cycles are still collected; only the start-up heap, which lives as long as the process, is
exempt."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def apply(freeze: bool, gen0: int) -> dict[str, object]:
    """Collect once, freeze the start-up heap (when ``freeze``), set the gen-0 threshold (> 0)."""
    if gen0 > 0:
        _, g1, g2 = gc.get_threshold()
        gc.set_threshold(gen0, g1, g2)
    frozen = 0
    if freeze:
        gc.collect()
        gc.freeze()
        frozen = gc.get_freeze_count()
    out = {"frozen_objects": frozen, "threshold": gc.get_threshold()}
    log.info("gc: %s", out)
    return out

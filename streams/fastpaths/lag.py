"""Consumer lag per partition: the high-water mark minus the position the worker has read.

Faust's public consumer API gives the high-water mark (``Consumer.highwater``) but not the
offset read so far; that is the consumer's private ``_read_offset`` map (faust-streaming 0.15,
see :mod:`.support`). Start-up check: faust-streaming inside the tested range; at run time the
consumer must have the map. Fallback: the lag gauge is not set (a WARNING says so once).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from . import support

log = logging.getLogger(__name__)

FALLBACK = "the consumer-lag gauge is not set"


def supported() -> bool:
    """The start-up check (faust-streaming inside the tested range)."""
    return support.check("lag", FALLBACK, ("faust-streaming",))


class LagReader:
    """Lag of every assigned partition, from Faust's consumer (``enabled``: the start-up check)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def read(self, consumer: Any) -> dict[Any, int]:
        """``{TopicPartition: records behind}`` for the assigned partitions whose high-water mark
        is known; empty when the fast path is off."""
        if not self.enabled:
            return {}
        read = getattr(consumer, "_read_offset", None)
        if not isinstance(read, Mapping):
            log.warning("fast path lag off (the consumer has no _read_offset map): %s", FALLBACK)
            self.enabled = False
            return {}
        out: dict[Any, int] = {}
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if high is not None:
                pos = read.get(tp)
                out[tp] = max(high - (pos + 1 if pos is not None else 0), 0)
        return out

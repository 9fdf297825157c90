"""The worker's fast paths: every use of faust-streaming or aiokafka private internals, fenced here.

Each fast path checks at start-up that the installed versions are inside the tested range
(:data:`.support.TESTED`, the same as ``pyproject.toml``) and that the attributes it needs exist;
otherwise it logs a WARNING and the worker runs the public-API fallback:

=============== ============================================== ====================================
fast path       private internals                              fallback
=============== ============================================== ====================================
outbox          aiokafka producer/accumulator internals,       Faust's ``producer.send`` per record
                Faust ``Producer._ensure_producer``
fastdrain       Faust ``Consumer._drain_messages`` (rewritten) Faust's loop, unpatched
bind            ``faust.streams._current_event``               per-event agents; the join writes via
                                                               ``Table.send_changelog``
quiet_monitor   ``faust.sensors.Monitor``'s per-record hooks   Faust's own ``Monitor``
lag             Faust consumer ``_read_offset``                no consumer-lag gauge
=============== ============================================== ====================================

Nothing outside this package touches a private name of either dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import current_event, fastdrain, lag, outbox, quiet_monitor


@dataclass(frozen=True)
class FastPaths:
    """Which fast paths the worker runs (each False: its public fallback)."""

    outbox: bool
    fastdrain: bool
    bind: bool
    quiet_monitor: bool
    lag: bool

    @classmethod
    def detect(cls, *, drain: bool = True, quiet: bool = True) -> FastPaths:
        """Run the start-up checks of the fast paths asked for (``drain``: install fastdrain,
        ``quiet``: the quiet Monitor); the others are always checked."""
        return cls(
            outbox=outbox.supported(),
            fastdrain=fastdrain.install() if drain else _drain_off(),
            bind=current_event.supported(),
            quiet_monitor=quiet and quiet_monitor.supported(),
            lag=lag.supported(),
        )


def _drain_off() -> bool:
    fastdrain.uninstall()  # FAST_DRAIN=false: Faust's own loop, even if an earlier app patched it
    return False


__all__ = ["FastPaths", "current_event", "fastdrain", "lag", "outbox", "quiet_monitor"]

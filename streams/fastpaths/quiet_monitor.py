"""Faust's ``Monitor`` sensor without its per-record bookkeeping (``FAUST_MONITOR`` off, the default).

Faust calls it for every record in, every stream event in and out, every record out and every
table read and write: ~3 % of the worker's CPU, for counters only Faust's own stats views read
(the worker's ``/metrics`` are its own). Everything else (commits, rebalances, assignment, end
offsets) is kept.

Relies on how faust-streaming 0.15's ``Monitor`` uses its own per-record hooks (nothing else of
Faust reads the counters they keep), so it is fenced like the other fast paths: the start-up
check wants faust-streaming inside the tested range and the hooks it overrides to exist.
Fallback: Faust's own ``Monitor``.
"""

from __future__ import annotations

from typing import Any

from faust.sensors import Monitor

from . import support

FALLBACK = "Faust's own per-record Monitor sensor"
HOOKS = (
    "on_message_in",
    "on_stream_event_in",
    "on_stream_event_out",
    "on_message_out",
    "on_table_get",
    "on_table_set",
    "on_table_del",
)


def supported() -> bool:
    """The start-up check (faust-streaming in range, ``Monitor`` has every hook overridden here)."""
    return support.check("quiet_monitor", FALLBACK, ("faust-streaming",), [(Monitor, h) for h in HOOKS])


class RecordQuietMonitor(Monitor):
    """``Monitor`` with its per-record hooks turned into no-ops."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None

    def on_table_del(self, table: Any, key: Any) -> None:
        return None

"""Make a given event Faust's current event, so table writes go to its partition's changelog.

Batches from ``Stream.take_events`` are buffered by a background task, so the agent's own task
has no current event (or the last one of the batch); each table write must instead be attributed
to the event of its own key, hence its partition, as per-event iteration would.

Private internal used: the context variable ``faust.streams._current_event`` (faust-streaming
0.15, see :mod:`.support`). Fallback (another version, or the variable is gone): :func:`bind`
is unavailable; agents that write tables iterate event by event (``Stream.events()``, where
Faust sets the current event itself) and the join writes its table through the public
``Table.data`` and ``Table.send_changelog`` (with the partition of the key's event).
"""

from __future__ import annotations

import weakref
from contextvars import ContextVar
from typing import Any

from . import support

FALLBACK = "agents that write tables iterate event by event; the join writes through Table.send_changelog"
_var: ContextVar[Any] | None = None


def supported() -> bool:
    """The start-up check (faust-streaming in range, ``faust.streams._current_event`` a ContextVar)."""
    global _var
    import faust.streams

    if not support.check("bind", FALLBACK, ("faust-streaming",), [(faust.streams, "_current_event")]):
        _var = None
        return False
    var = faust.streams._current_event
    if not isinstance(var, ContextVar):
        support.log.warning(
            "fast path bind off (faust.streams._current_event is not a ContextVar): %s", FALLBACK
        )
        _var = None
        return False
    _var = var
    return True


def bind(event: Any) -> None:
    """Make ``event`` the current event of this task (call :func:`supported` first)."""
    if _var is None:
        raise RuntimeError("binding a current event is not supported here (see supported())")
    _var.set(weakref.ref(event))

"""Which asyncio event loop the streams worker runs on (``SWITCHYARD_STREAMS_EVENT_LOOP``).

uvloop (libuv, in C) makes the loop's own work cheaper: futures, callbacks, socket reads and
writes. That is a large share of the worker's per-record cost (Faust's fetcher thread and the
agents each run an asyncio loop; aiokafka creates a future per produced record). ``auto`` (the
default) uses uvloop when it can be imported and asyncio's own loop otherwise; ``uvloop`` insists
on it; ``asyncio`` switches it off. It is chosen through mode's loop registry
(``mode.loop.use``, Faust's ``--loop`` option): an event-loop policy, so that every loop created
after it (the worker's and the consumer thread's) is one. Call :func:`install` before any loop
of the worker is created.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging

log = logging.getLogger(__name__)


def resolve(choice: str) -> str:
    """The loop to use for a setting: ``uvloop`` or ``asyncio``.

    ``auto`` picks uvloop when it is importable; ``uvloop`` raises when it is not."""
    if choice == "asyncio":
        return "asyncio"
    available = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not available:
        raise RuntimeError("SWITCHYARD_STREAMS_EVENT_LOOP=uvloop but uvloop is not installed")
    if choice not in ("auto", "uvloop"):
        raise ValueError(f"unknown event loop {choice!r}: auto, uvloop or asyncio")
    return "uvloop" if available else "asyncio"


def install(choice: str) -> str:
    """Make new event loops of this process the chosen kind; return which (``uvloop``/``asyncio``)."""
    loop = resolve(choice)
    if loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")  # sets uvloop's event-loop policy
    else:
        asyncio.set_event_loop_policy(None)  # asyncio's default policy (undoes an earlier uvloop)
    log.info("event loop: %s", loop)
    return loop


def running() -> str:
    """The kind of the running loop (``uvloop`` or ``asyncio``), e.g. for ``/progress/``."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"

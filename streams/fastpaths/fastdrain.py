"""A cheaper hand-off from Faust's fetcher to the streams (the worker's hottest loop).

faust-streaming's ``Consumer._drain_messages`` delivers every fetched record with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four asyncio tasks and an
``asyncio.wait`` per record, so that a rebalance (``suspend_flow``) can interrupt a delivery that
blocks on a full stream buffer. A profile of the worker shows that this costs about half of
Faust's whole per-record consume path (bench: ~8,500 -> ~16,000-19,000 records per CPU-second
for an agent that does nothing; see docs/streams.md, "Benchmark").

:func:`install` rewrites that one call (and nothing else of the upstream loop) into
:func:`deliver`, which keeps the semantics:

* while the flow is suspended, it calls ``wait_first`` exactly as upstream does;
* otherwise it runs the callback inline until it completes or first blocks. Delivering a record
  to a stream buffer that has room completes without blocking and costs no task at all. If it
  blocks (a full buffer: the usual case while the worker works through a backlog), this task
  waits for what it waits for, or for one long-lived watcher of ``suspend_flow`` (and of the
  consumer stopping or crashing, as ``wait_first`` watches those too) and resumes it; if the
  watcher fires first the delivery is cancelled, as upstream cancels it.

Private internals used: ``faust.transport.consumer.Consumer._drain_messages`` (its source is
recompiled with the one call replaced) and the consumer's ``suspend_flow``/``wait_first``.
Start-up check: faust-streaming inside the tested range (:mod:`.support`), the method exists and
its source contains the call exactly once. Otherwise nothing is patched and a WARNING says so:
the worker then runs Faust's own loop (the public behaviour), only slower.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import textwrap
from collections.abc import Callable, Coroutine
from typing import Any

from . import support

log = logging.getLogger(__name__)

_CALL = re.compile(
    r"await\s+self\.wait_first\(\s*callback\(message\),\s*self\.suspend_flow\.wait\(\)\s*,?\s*\)"
)
_installed = False
FALLBACK = "Faust's own record delivery (a wait_first per record), unpatched and slower"


async def deliver(consumer: Any, callback: Callable[[Any], Coroutine[Any, Any, Any]], message: Any) -> None:
    """Deliver one record as Faust's ``wait_first(callback(message), suspend_flow.wait())`` does,
    without creating a task per record."""
    suspend_flow = consumer.suspend_flow
    if suspend_flow.is_set():
        await consumer.wait_first(callback(message), suspend_flow.wait())
        return
    coro = callback(message)
    try:
        pending = coro.send(None)
    except StopIteration:
        return
    await _finish(consumer, coro, pending)


async def _finish(consumer: Any, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
    """Drive a delivery that blocked on ``pending`` (a full stream buffer, flow control) to its
    end in this task. If the flow is suspended (a rebalance), or the consumer stops or crashes,
    before it unblocks, it is cancelled, as ``wait_first`` cancels it upstream."""
    watch = _watch(consumer)
    try:
        while True:
            if pending is None:  # a bare yield (``asyncio.sleep(0)``)
                await asyncio.sleep(0)
            elif not pending.done():
                await _first(pending, watch)
                if not pending.done():
                    _cancel(coro)
                    return
            try:
                pending = coro.send(None)
            except StopIteration:
                return
    except BaseException:
        coro.close()
        raise


async def _first(a: asyncio.Future, b: asyncio.Future) -> None:
    """Wait until ``a`` or ``b`` is done (``asyncio.wait(..., FIRST_COMPLETED)`` for two
    futures, without its sets and timeout handling: this runs once per record in a backlog)."""
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_result(None)

    a.add_done_callback(wake)
    b.add_done_callback(wake)
    try:
        await waiter
    finally:
        a.remove_done_callback(wake)
        b.remove_done_callback(wake)


def _cancel(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        coro.throw(asyncio.CancelledError())
    except (asyncio.CancelledError, StopIteration):
        return
    coro.close()  # it swallowed the cancellation and waits again: stop it for good


def _watch(consumer: Any) -> asyncio.Future:
    """One long-lived task per consumer that completes when its flow is suspended, or when it
    stops or crashes (mode's ``wait_first`` watches those two as well)."""
    watch = getattr(consumer, "_switchyard_watch", None)
    if watch is None or watch.done():
        watch = asyncio.ensure_future(consumer.wait_first(consumer.suspend_flow.wait()))
        consumer._switchyard_watch = watch
    return watch


def patched_source(source: str) -> str | None:
    """The upstream ``_drain_messages`` source with its per-record ``wait_first`` call replaced
    by :func:`deliver`; None when the call is not found exactly once."""
    new, n = _CALL.subn("await _switchyard_deliver(self, callback, message)", source)
    return new if n == 1 else None


def install() -> bool:
    """Patch ``faust.transport.consumer.Consumer._drain_messages`` (once per process).

    Returns whether the fast path is active."""
    global _installed
    from faust.transport import consumer as fc

    if not support.check("fastdrain", FALLBACK, ("faust-streaming",), [(fc.Consumer, "_drain_messages")]):
        uninstall()
        return False
    if _installed:
        return True
    original = fc.Consumer._drain_messages
    try:
        source = textwrap.dedent(inspect.getsource(original))
    except (OSError, TypeError):
        source = ""
    new = patched_source(source)
    if new is None:
        log.warning("fast path fastdrain off (Consumer._drain_messages has changed): %s", FALLBACK)
        return False
    namespace: dict[str, Any] = dict(vars(fc))
    namespace["_switchyard_deliver"] = deliver
    code = compile(new, f"<switchyard fastdrain: {inspect.getsourcefile(original)}>", "exec")
    local: dict[str, Any] = {}
    exec(code, namespace, local)  # noqa: S102 - upstream's own source with one call replaced
    patched = local["_drain_messages"]
    patched.__wrapped__ = original  # type: ignore[attr-defined]
    fc.Consumer._drain_messages = patched  # type: ignore[method-assign]
    _installed = True
    return True


def uninstall() -> None:
    """Put Faust's own ``_drain_messages`` back (when :func:`install` patched it)."""
    global _installed
    from faust.transport import consumer as fc

    original = getattr(fc.Consumer._drain_messages, "__wrapped__", None)
    if _installed and original is not None:
        fc.Consumer._drain_messages = original  # type: ignore[method-assign]
    _installed = False

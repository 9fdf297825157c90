"""The id of the request being served, for every log line and upstream call it causes.

The ingress binds the server-issued request id (:func:`bind`) for the duration of a call; the
provider layer sends it upstream as ``x-request-id`` and names it in its log lines; the router
replicas get it in the :class:`~services.gateway.routing.RouteRequest` (another process). Log
lines about a request start with ``request <id>:``, so one id finds every line of a request.
Context variables follow asyncio tasks, so concurrent requests never see each other's id.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

UPSTREAM_HEADER = "x-request-id"

_REQUEST_ID: ContextVar[str | None] = ContextVar("switchyard_request_id", default=None)


def current_request_id() -> str | None:
    """The id bound in this task (``None`` outside a request)."""
    return _REQUEST_ID.get()


@contextmanager
def bound(request_id: str | None) -> Iterator[None]:
    """Bind ``request_id`` for the code inside (and the tasks it starts)."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        try:
            _REQUEST_ID.reset(token)
        except ValueError:  # an async generator finalised in another context: nothing to undo there
            pass

"""Reading a request body against slow clients (issue 19, "Slow clients exhaust the ingress").

A request holds one of the ingress replica's ``max_ongoing_requests`` slots from the moment its
headers are complete, so a client that sends headers and then trickles (or never sends) its body
keeps that slot. The body must therefore arrive whole within ``timeout_s`` and, after a grace
period, at no less than ``min_bytes_per_s`` on average; otherwise the read stops with a 408 and the
connection is closed, which frees the slot. One deadline covers both: for ``received`` bytes after
``start`` the next chunk is due by ``min(start + timeout_s, start + grace_s + received /
min_bytes_per_s)``.

Connections whose *headers* never complete do not reach the app at all (uvicorn holds them; they
take a file descriptor, no slot), so these limits do not apply to them: see docs/operations.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.errors import PayloadTooLarge, RequestTimeout


@dataclass(frozen=True)
class BodyLimits:
    """The body deadline and rate floor; 0 turns either off."""

    timeout_s: float = 10.0
    min_bytes_per_s: float = 1024.0
    grace_s: float = 2.0

    def deadline(self, start: float, received: int) -> float | None:
        """When the next chunk is due, given ``received`` bytes since ``start`` (None: never)."""
        due = start + self.timeout_s if self.timeout_s > 0 else None
        if self.min_bytes_per_s > 0:
            floor = start + self.grace_s + received / self.min_bytes_per_s
            due = floor if due is None else min(due, floor)
        return due

    def describe(self) -> str:
        parts = []
        if self.timeout_s > 0:
            parts.append(f"whole body within {self.timeout_s:g} s")
        if self.min_bytes_per_s > 0:
            parts.append(f"at least {self.min_bytes_per_s:g} bytes/s after {self.grace_s:g} s")
        return ", ".join(parts)


async def read_body(
    chunks: AsyncIterator[bytes], limit: int, limits: BodyLimits | None, declared: str | None = None
) -> bytes:
    """The whole body from ``chunks`` (Starlette's ``request.stream()``): 413 past ``limit`` bytes,
    408 (``RequestTimeout``, with ``Connection: close``) when it comes too slowly."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    it = aiter(chunks)
    parts: list[bytes] = []
    size = 0
    while True:
        due = limits.deadline(start, size) if limits is not None else None
        try:
            async with asyncio.timeout_at(due):
                chunk = await anext(it)
        except StopAsyncIteration:
            break
        except TimeoutError:
            of = f" of {declared}" if declared else ""
            raise RequestTimeout(
                f"request body not received in time: {size}{of} bytes after "
                f"{loop.time() - start:.1f} s (limits: {limits.describe() if limits else ''})",
                headers={"connection": "close"},
            ) from None
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)

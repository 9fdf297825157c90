"""HTTP plumbing shared by the adapters: pooled clients, status → error mapping, SSE lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from services.catalog import Provider
from services.errors import UpstreamError, UpstreamTimeout
from services.request_context import UPSTREAM_HEADER, current_request_id

from .base import Timeouts

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}


def make_client(
    base_url: str,
    timeouts: Timeouts,
    headers: dict[str, str],
    max_connections: int = 200,
    transport: httpx.AsyncBaseTransport | None = None,
    wire: str = "aiohttp",
) -> httpx.AsyncClient:
    """One pooled client per upstream; the read timeout is the first-token timeout.

    The wire is aiohttp (:class:`AiohttpTransport`, far less CPU per call than httpcore) unless a
    ``transport`` is given or ``wire`` is ``httpx`` (``SWITCHYARD_GATEWAY_PROVIDERS_TRANSPORT``)."""
    if transport is None and wire == "aiohttp":
        from .aiohttp_transport import AiohttpTransport

        transport = AiohttpTransport(max_connections)
    return httpx.AsyncClient(
        event_hooks={"request": [_tag_request]},
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(
            connect=timeouts.connect_s, read=timeouts.first_token_s, write=10.0, pool=timeouts.connect_s
        ),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        transport=transport,
    )


class PooledAdapter:
    """What every upstream adapter shares: its name and timeouts, and one pooled client that
    carries the provider's key (read from the env var the catalog names) in the provider's
    own auth header."""

    def __init__(
        self,
        provider: Provider,
        max_connections: int = 200,
        transport: httpx.AsyncBaseTransport | None = None,
        wire: str = "aiohttp",
    ):
        self.name = provider.name
        self.timeouts = Timeouts.of(provider)
        key = os.environ.get(provider.api_key_env) if provider.api_key_env else None
        headers = {"content-type": "application/json", **self.static_headers()}
        if key:
            headers.update(self.auth_headers(key))
        self._client = make_client(
            provider.base_url, self.timeouts, headers, max_connections, transport, wire
        )

    def static_headers(self) -> dict[str, str]:
        """Headers every request of this protocol carries."""
        return {}

    def auth_headers(self, key: str) -> dict[str, str]:
        """How this protocol presents an API key."""
        return {"authorization": f"Bearer {key}"}

    async def aclose(self) -> None:
        """Close the pooled client."""
        await self._client.aclose()


async def _tag_request(request: httpx.Request) -> None:
    """Send the gateway's request id upstream, so the upstream's logs can be joined with ours."""
    request_id = current_request_id()
    if request_id is not None:
        request.headers[UPSTREAM_HEADER] = request_id


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: an integer/float or an HTTP date; ``None`` when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    except (ValueError, AttributeError):
        return body[:300].decode("utf-8", "replace")


def status_error(upstream: str, status: int, body: bytes, headers: httpx.Headers) -> UpstreamError:
    """An upstream's non-2xx answer as an :class:`UpstreamError` (retryable on 429/5xx)."""
    msg = f"upstream {upstream} answered {status}: {_error_message(body)}"
    if status in (408, 504):
        return UpstreamTimeout(msg, upstream=upstream, http_status=status)
    return UpstreamError(
        msg,
        upstream=upstream,
        http_status=status,
        retry_after_s=parse_retry_after(headers.get("retry-after")),
        retryable=status in RETRYABLE_STATUS,
    )


def transport_error(upstream: str, exc: BaseException) -> UpstreamError:
    """A transport failure (timeout, refused, reset) as an :class:`UpstreamError`."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError, asyncio.TimeoutError)):
        kind = type(exc).__name__
        return UpstreamTimeout(f"upstream {upstream} timed out ({kind})", upstream=upstream)
    return UpstreamError(f"upstream {upstream} unreachable: {type(exc).__name__}: {exc}", upstream=upstream)


@asynccontextmanager
async def mapped_errors(upstream: str) -> AsyncIterator[None]:
    """Turn httpx/timeout exceptions raised inside into :class:`UpstreamError`."""
    try:
        yield
    except UpstreamError:
        raise
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        raise transport_error(upstream, exc) from exc


async def post_json(
    client: httpx.AsyncClient, upstream: str, path: str, payload: dict[str, Any], total_s: float
) -> dict[str, Any]:
    """POST JSON, return the JSON answer; non-2xx and transport failures raise UpstreamError."""
    async with mapped_errors(upstream):
        async with asyncio.timeout(total_s):
            resp = await client.post(path, json=payload)
        if resp.status_code >= 400:
            raise status_error(upstream, resp.status_code, resp.content, resp.headers)
        try:
            return resp.json()
        except ValueError as exc:
            raise UpstreamError(f"upstream {upstream} sent invalid JSON", upstream=upstream) from exc


async def sse_events(resp: httpx.Response) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent-events response, in order."""
    async for line in resp.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


async def timed_sse_events(resp: httpx.Response, upstream: str, deadline: float) -> AsyncIterator[str]:
    """``sse_events`` bounded by a total deadline (event-loop time): past it, ``UpstreamTimeout``."""
    loop = asyncio.get_running_loop()
    events = sse_events(resp)
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UpstreamTimeout(f"upstream {upstream} stream exceeded total timeout", upstream=upstream)
        try:
            async with asyncio.timeout(remaining):
                data = await anext(events)
        except StopAsyncIteration:
            return
        yield data


def decode_event(upstream: str, data: str, what: str = "event") -> dict[str, Any]:
    """One SSE payload as JSON, or ``UpstreamError`` naming the upstream."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise UpstreamError(f"upstream {upstream} sent a malformed {what}", upstream=upstream) from exc

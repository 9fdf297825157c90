"""ASGI plumbing of the emulator: read a JSON body, send a JSON or SSE response, and the errors
that are answered in the API's own error shape (each wire protocol renders them its way)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

MAX_BODY = 8 * 1024 * 1024
Send = Any
Receive = Any
Headers = list[tuple[bytes, bytes]]


class StreamCut(Exception):
    """Raised inside a stream to make the server drop the connection (an injected fault)."""


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class HTTPError(Exception):
    """An error answered in the API's own error format."""

    def __init__(
        self, status: int, message: str, etype: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.etype, self.code, self.param = status, message, etype, code, param
        self.headers: Headers = []


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def query(scope: dict) -> dict[str, str]:
    """The query string's parameters (first value of each)."""
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}


async def read_json(receive: Receive, allow_empty: bool = False) -> dict:
    """The request body as a JSON object (``{}`` for an empty body when ``allow_empty``)."""
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        body += msg.get("body", b"")
        if len(body) > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes", "invalid_request_error")
        if not msg.get("more_body"):
            break
    if not body and allow_empty:
        return {}
    try:
        req = json.loads(body)
    except ValueError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}", "invalid_request_error") from exc
    if not isinstance(req, dict):
        raise HTTPError(400, "request body must be a JSON object", "invalid_request_error")
    return req


async def send_body(send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    """A complete JSON response (``body`` already encoded)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any, headers: Headers | None = None) -> None:
    """A complete JSON response of ``obj``."""
    await send_body(send, status, dumps(obj), headers)


async def start_sse(send: Send, headers: Headers) -> None:
    """The start of a 200 server-sent-events response; events follow as body parts."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                *headers,
            ],
        }
    )

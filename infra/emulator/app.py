"""The emulator's HTTP app: a lean ASGI callable (no framework on the hot path) for uvicorn.

Endpoints (OpenAI/Anthropic shapes; side channels under ``/emulator``)::

    POST /v1/chat/completions     OpenAI chat completions, non-streaming and SSE streaming
    POST /v1/messages             Anthropic Messages, non-streaming and SSE streaming
    GET  /v1/models               the catalog models and the judge
    POST /v1/feedback             a sink for quality signals (so the replayer can run without a gateway)
    GET  /healthz, /readyz
    GET  /emulator/truth?prompt_hash=H&model=M   ground truth for (prompt, model), drift included
    POST /emulator/truth          same, body {"prompt" | "prompt_hash", "model"?}
    GET|POST|DELETE /emulator/faults   faults per model: POST {"model": M | "*", ...FaultSpec}
    GET|POST|DELETE /emulator/drift    drift rules: POST DriftRule
    POST /emulator/latency        {"speed": float}
    POST /emulator/reset          back to the start config; counters cleared
    GET  /emulator/stats          requests per model, injected faults, feedback count
    GET  /emulator/feedback       the feedback received
    POST /p/<provider>/v1/chat/completions, /p/<provider>/v1/messages, GET /p/<provider>/v1/models
                                  the same, sold by one catalog provider: only the models it has an
                                  offer for, at that offer's price, with faults set for
                                  ``model@provider`` (provider arbitrage; ``/v1/...`` unchanged)

Every answer carries the side channel headers ``x-emulator-correct`` (``1``, ``0`` or
``unknown``), ``x-emulator-prompt-hash``, ``x-emulator-task``, ``x-emulator-drifted`` and
``x-emulator-cost-usd`` (usage × catalog price). Correctness never appears in a response body.

This module only dispatches: what to answer and its pacing are in :mod:`.core`, the two chat
protocols' parsing and framing in :mod:`.openai_wire` and :mod:`.anthropic_wire`, the other
routes in :mod:`.admin`.
"""

from __future__ import annotations

import logging

from .admin import AdminRoutes, Route
from .anthropic_wire import AnthropicWire
from .asgi import ClientGone, HTTPError, Receive, Send, StreamCut, read_json, send_json
from .core import Emulator, Wire
from .openai_wire import OpenAIWire

log = logging.getLogger(__name__)


class EmulatorApp:
    """The ASGI app: routes a request to a chat protocol or an admin route, and answers errors in
    the protocol's own shape."""

    def __init__(self, emulator: Emulator, *, chunk_words: int = 4, api_key: str | None = None) -> None:
        self.emulator = emulator
        self.api_key = api_key
        self._openai = OpenAIWire(chunk_words)
        self._wires: dict[str, Wire] = {
            "/v1/chat/completions": self._openai,
            "/v1/messages": AnthropicWire(chunk_words),
        }
        self._admin = AdminRoutes(self.emulator)
        self._routes: dict[tuple[str, str], Route] = {
            **{("POST", path): self._chat(wire) for path, wire in self._wires.items()},
            **self._admin.routes(),
        }

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        provider, path = self._provider_prefix(path)
        # errors on /v1/messages are Anthropic-shaped, all others OpenAI-shaped
        wire = self._wires.get(path, self._openai)
        try:
            if provider is not None:
                if provider not in self.emulator.providers or not path.startswith("/v1/"):
                    raise HTTPError(
                        404, f"no route {method} {scope['path']}", "invalid_request_error", "not_found"
                    )
                scope = {**scope, "emulator.provider": provider}
            await self._route(method, path)(scope, receive, send)
        except HTTPError as err:
            await send_json(send, err.status, wire.error_body(err), err.headers)
        except ClientGone:
            return
        except StreamCut:
            raise
        except Exception:
            # a bug, not an injected fault: answer in the API's error shape if nothing was sent yet
            log.exception("emulator: unhandled error on %s %s", method, path)
            try:
                err = HTTPError(500, "emulator internal error", "server_error")
                await send_json(send, err.status, wire.error_body(err))
            except Exception:  # noqa: BLE001 - the response had started; the server closes the connection
                pass

    @staticmethod
    def _provider_prefix(path: str) -> tuple[str | None, str]:
        """``/p/<provider>/rest`` → (provider, ``/rest``); any other path → (None, path)."""
        if not path.startswith("/p/"):
            return None, path
        provider, _, rest = path[3:].partition("/")
        return provider, "/" + rest

    def _route(self, method: str, path: str) -> Route:
        handler = self._routes.get((method, path))
        if handler is not None:
            return handler
        if method == "GET" and path.startswith("/v1/models/"):
            model_id = path[len("/v1/models/") :]
            return lambda scope, receive, send: self._admin.model_card(model_id, send)
        if any(p == path for _, p in self._routes):
            raise HTTPError(405, f"method {method} not allowed on {path}", "invalid_request_error")
        raise HTTPError(404, f"no route {method} {path}", "invalid_request_error", "not_found")

    def _chat(self, wire: Wire) -> Route:
        """A chat route: auth, then the core's one code path with this protocol's wire."""

        async def handle(scope: dict, receive: Receive, send: Send) -> None:
            self._check_auth(scope)
            await self.emulator.answer(wire, await read_json(receive), send, scope.get("emulator.provider"))

        return handle

    def _check_auth(self, scope: dict) -> None:
        if not self.api_key:
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        if auth != f"Bearer {self.api_key}" and key != self.api_key:
            raise HTTPError(
                401, "Incorrect API key provided (emulator).", "invalid_request_error", "invalid_api_key"
            )

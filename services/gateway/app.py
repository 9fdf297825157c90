"""The HTTP surface (FastAPI): thin handlers over :class:`ChatService`, and the one place that
maps errors to the OpenAI error body."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from services.contracts.api import (
    ChatCompletionRequest,
    FeedbackRequest,
    FeedbackSource,
    ModelCard,
    ModelList,
    SwitchyardKnobs,
)
from services.errors import (
    BadRequest,
    ClientClosedRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    NotReady,
    PayloadTooLarge,
    PermissionDenied,
    RequestExpired,
    RequestNotFound,
    SwitchyardError,
    Unauthorized,
    ValidationFailed,
)

from .auth import Caller, KeyStore
from .body import BodyLimits, read_body
from .identity import IdCheck, RequestIds
from .metrics import GatewayMetrics
from .openapi import error_responses, header_parameters, install, request_body
from .ratelimit import AuthFailureLimiter, RateLimiter
from .service import ChatService, new_request_id

log = logging.getLogger(__name__)

KNOB_HEADERS = {
    "x-switchyard-task": "task",
    "x-switchyard-quality-target": "quality_target",
    "x-switchyard-mode": "mode",
    "x-switchyard-max-cost-usd": "max_cost_usd",
    "x-switchyard-tenant": "tenant",
    "x-switchyard-cache": "cache",
}


class Gateway:
    """What the handlers need: the service, auth, limits, metrics, and lifecycle hooks."""

    GAUGE_INTERVAL_S = 5.0  # how often a fleet replica refreshes its gauges for Ray's export

    def __init__(
        self,
        service: ChatService,
        keys: KeyStore,
        limiter: RateLimiter,
        metrics: GatewayMetrics,
        max_body_bytes: int,
        router_status: Callable[[], Awaitable[dict[str, Any]]],
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        health_timeout_s: float = 2.0,
        auth_failures: AuthFailureLimiter | None = None,
        request_ids: RequestIds | None = None,
        feedback_max_age_s: float = 7 * 24 * 3600.0,
        body_limits: BodyLimits | None = None,
        metrics_public: bool = False,
        docs_public: bool = False,
    ):
        self.service = service
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.router_status = router_status
        self.on_start = on_start
        self.on_stop = on_stop
        self.health_timeout_s = health_timeout_s
        self.auth_failures = auth_failures
        # signed request ids (tenant, issue time): feedback is checked against them; without them
        # (tests of other parts) ids are plain and feedback unchecked
        self.request_ids = request_ids
        self.feedback_max_age_s = feedback_max_age_s
        self.body_limits = body_limits  # body deadline and rate floor (None: off)
        # exposure: /metrics and /openapi.json need an API key unless public; /docs only when public
        self.metrics_public = metrics_public
        self.docs_public = docs_public
        self.router_seen = False  # whether /readyz has seen a router loaded since start
        # the ingress replica's own alias follower (its in-process router), reported in /readyz
        self.follow_status: Callable[[], dict[str, Any]] | None = None
        self.started = False
        self._gauges: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.started:
            self.started = True
            if self.on_start:
                await self.on_start()
            if self.metrics.fleet and self._gauges is None:
                # nobody scrapes a replica's /metrics in a fleet: Ray exports what the gauges hold
                self._gauges = asyncio.get_running_loop().create_task(self._refresh_gauges())

    async def stop(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
            self._gauges = None
        if self.started and self.on_stop:
            await self.on_stop()
        self.started = False

    def update_gauges(self) -> None:
        """Set the gauges that are read, not counted: emitter queue and spool, breaker states, the
        semantic cache's size."""
        emitter = self.service.emitter
        if emitter is not None:
            self.metrics.queue_depth.set(emitter.queue_depth)
            self.metrics.spool_records.set(emitter.spool.pending)
            self.metrics.spool_bytes.set(emitter.spool.bytes)
            self.metrics.events_sent.set(emitter.sent)
        for name, state in self.service.pool.breaker_states().items():
            self.metrics.set_breaker(name, state)
        cache = self.service.cachepath.cache
        if cache is not None:
            self.metrics.cache_entries.set(len(cache))

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                self.update_gauges()
            except Exception:  # noqa: BLE001 - a gauge is never worth the loop
                log.exception("updating the gauges failed")
            await asyncio.sleep(self.GAUGE_INTERVAL_S)


def _summarise(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    first = errors[0].get("loc", ()) if errors else ()
    param = ".".join(str(x) for x in first if x != "body") or None
    return "; ".join(parts), param


def error_response(exc: SwitchyardError, request_id: str | None = None) -> JSONResponse:
    """The one mapping from our errors to an HTTP response with the OpenAI error body; every
    error carries the request id (the call's own, or a fresh one for requests that never got
    that far), so a client can quote it."""
    headers = {**(exc.headers or {}), "x-switchyard-request-id": request_id or new_request_id()}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _read_body(request: Request, limit: int, limits: BodyLimits | None = None) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
    # 408 (and the slot freed) when the body comes too slowly: services.gateway.body
    return await read_body(request.stream(), limit, limits, declared)


# JSON nested deeper than this is refused (a 400), and so is a number that is not finite anywhere
# in a body (NaN, Infinity, 1e999 in a passed-through parameter): what parses here can still break
# an upstream's parser or our JSON encoder (a 500 or 502: found by tests/integration/test_gateway_fuzz.py)
MAX_JSON_DEPTH = 64
# bytes that may hold a non-finite number (also inside a string: then only the slow path is taken)
_MAYBE_NOT_FINITE = re.compile(rb"NaN|Infinity|\d[eE]\+?\d{3}|\d{300}")


def _json_problem(data: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """What makes parsed JSON unfit to pass on (nesting over ``limit``, a non-finite number)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return f"request body holds a number that is not finite ({node})"
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return f"request body is nested too deeply (more than {limit} levels)"
        stack.extend((c, depth + 1) for c in children)
    return None


def _fast_path_fits(raw: bytes) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH and not _MAYBE_NOT_FINITE.search(raw):
        return True
    try:
        return _json_problem(json.loads(raw)) is None
    except (ValueError, RecursionError):
        return False  # not JSON: the slow path says what is wrong


def _parse(model: type, raw: bytes) -> Any:
    # Fast path: pydantic parses and validates the bytes in one go (no Python dict in between).
    # Anything it rejects goes the slow way, which words every error exactly as before; so does a
    # body nested too deeply or with a non-finite number (looked for only when the bytes may hold one).
    if raw and _fast_path_fits(raw):
        try:
            return model.model_validate_json(raw)
        except ValueError:
            pass
    try:
        data = json.loads(raw) if raw else None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    try:  # a lone surrogate escape ("\ud800") parses, but no upstream or event can carry it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("request body holds an invalid Unicode escape (a lone surrogate)") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        msg, param = _summarise(exc)
        raise ValidationFailed(f"invalid request: {msg}", param=param) from exc
    problem = _json_problem(data)  # in what the model passes on untyped (a typed field said so above)
    if problem:
        raise BadRequest(problem)
    return parsed


_CLIENT_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces: safe in logs and headers


def _client_request_id(request: Request) -> str | None:
    raw = request.headers.get("x-client-request-id") or request.headers.get("x-request-id")
    if raw is None:
        return None
    if not _CLIENT_ID.fullmatch(raw):
        raise BadRequest("X-Client-Request-Id must be 1-128 printable ASCII characters without spaces")
    return raw


def _header_knobs(request: Request) -> SwitchyardKnobs:
    raw = {field: request.headers[h] for h, field in KNOB_HEADERS.items() if h in request.headers}
    try:
        return SwitchyardKnobs.model_validate(raw)
    except ValidationError as exc:
        msg, _ = _summarise(exc)
        raise BadRequest(f"invalid X-Switchyard-* header: {msg}") from exc


def create_app(gw: Gateway) -> FastAPI:
    """The FastAPI app over a :class:`Gateway` (used by the Serve ingress and by tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        yield
        await gw.stop()

    public = {} if gw.docs_public else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Switchyard", version="0.1.0", lifespan=lifespan, **public)

    @app.exception_handler(SwitchyardError)
    async def _sw_error(request: Request, exc: SwitchyardError) -> JSONResponse:
        log.log(exc.log_level, "%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        # an error of a call is counted by the service with its call; any other here, once
        if exc.status >= 400 and not exc.counted and exc.status not in (502, 504):
            gw.metrics.errors.labels(status=str(exc.status), code=exc.code).inc()
        return error_response(exc, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _summarise(exc)
        return await _sw_error(request, ValidationFailed(f"invalid request: {msg}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds: dict[int, type[SwitchyardError]] = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge}
        kind = kinds.get(exc.status_code, BadRequest if exc.status_code < 500 else SwitchyardError)
        error = kind(f"{exc.detail}: {request.method} {request.url.path}")
        response = error_response(error, _request_id(request))
        if exc.status_code == 405 and exc.headers and "allow" in {k.lower() for k in exc.headers}:
            response.headers["allow"] = next(v for k, v in exc.headers.items() if k.lower() == "allow")
        elif exc.status_code == 405:
            path = request.url.path
            routes = [r for r in app.routes if getattr(r, "path", None) == path]
            allowed = sorted({m for r in routes for m in getattr(r, "methods", None) or ()})
            if allowed:
                response.headers["allow"] = ", ".join(allowed)
        return response

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # the client closed the connection while sending its body: not a server error
        return await _sw_error(request, ClientClosedRequest("client disconnected while sending the body"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        gw.metrics.errors.labels(status="500", code="internal_error").inc()
        return error_response(SwitchyardError(f"internal error ({type(exc).__name__})"), _request_id(request))

    async def caller_of(request: Request) -> Caller:
        if not gw.started:
            await gw.start()
        source = request.client.host if request.client else "unknown"
        try:
            caller = gw.keys.authenticate(request.headers.get("authorization"))
        except Unauthorized:
            if gw.auth_failures is not None:
                await gw.auth_failures.blocked(source)  # over its failed-auth budget: 429, not 401
                await gw.auth_failures.failed(source)
            raise
        if gw.auth_failures is None:
            await gw.limiter.check(caller.key_id)
            return caller
        # a source over its failed-auth budget gets a 429 even with a valid key; both limits are
        # asked at once (one round trip to a shared store, not two)
        blocked, limited = await asyncio.gather(
            gw.auth_failures.blocked(source), gw.limiter.check(caller.key_id), return_exceptions=True
        )
        for outcome in (blocked, limited):
            if isinstance(outcome, BaseException):
                raise outcome
        return caller

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses=error_responses(400, 401, 403, 404, 413, 429, 502, 503, 504),
        openapi_extra={
            **request_body(ChatCompletionRequest, "OpenAI's chat body; `switchyard` holds the routing knobs"),
            **header_parameters(KNOB_HEADERS),
            "security": [{"bearer": []}],
        },
    )
    async def chat_completions(request: Request) -> Response:
        # identity fields come from the server: the request id is always ours; a caller's own id
        # (OpenAI's ``X-Client-Request-Id``, or ``X-Request-Id``) is kept beside it, never instead
        request_id = new_request_id()
        request.state.request_id = request_id  # error responses name it too
        client_id = _client_request_id(request)
        caller = await caller_of(request)
        if gw.request_ids is not None:  # the call's id, signed with its tenant and time
            request_id = request.state.request_id = gw.request_ids.issue(caller.tenant)
        req: ChatCompletionRequest = _parse(
            ChatCompletionRequest, await _read_body(request, gw.max_body_bytes, gw.body_limits)
        )
        ctx = gw.service.context(req, _header_knobs(request), caller, request_id)
        ctx.client_request_id = client_id
        if req.stream:
            result = await gw.service.chat_stream(ctx)
            return StreamingResponse(result.events, media_type="text/event-stream", headers=result.headers)
        answer = await gw.service.chat(ctx)
        return Response(to_json(answer.body), media_type="application/json", headers=answer.headers)

    @app.post(
        "/v1/feedback",
        status_code=202,
        responses=error_responses(400, 401, 403, 404, 413, 429),
        openapi_extra={
            **request_body(FeedbackRequest, "A quality signal for a call"),
            "security": [{"bearer": []}],
        },
    )
    async def feedback(request: Request) -> JSONResponse:
        """Feedback on a call made with the same key (a judge key: any call); 404 for an id this
        gateway never issued, another tenant's, or one past the join's window."""
        caller = await caller_of(request)
        raw = await _read_body(request, gw.max_body_bytes, gw.body_limits)
        fb: FeedbackRequest = _parse(FeedbackRequest, raw)
        if fb.source is not FeedbackSource.USER and not caller.judge:
            raise PermissionDenied(
                f"feedback source '{fb.source.value}' needs a key with the judge role; send 'user'",
                param="source",
            )
        if gw.request_ids is not None:
            verdict = gw.request_ids.check(
                fb.request_id, caller.tenant, any_tenant=caller.judge, max_age_s=gw.feedback_max_age_s
            )
            if verdict is IdCheck.EXPIRED:
                raise RequestExpired(
                    f"request {fb.request_id} is older than the feedback window "
                    f"({gw.feedback_max_age_s / 3600:g} h): it can no longer be joined",
                    param="request_id",
                )
            if verdict is not IdCheck.OK:  # unknown and foreign alike: others' ids are not confirmed
                raise RequestNotFound(
                    f"no call {fb.request_id!r} was made by this API key's tenant", param="request_id"
                )
        return JSONResponse(gw.service.feedback(fb, tenant=caller.tenant).model_dump(), status_code=202)

    def model_cards(caller: Caller) -> list[ModelCard]:
        """The models ``caller`` may use (its allowlist's: services.gateway.budgets)."""
        cat = gw.service.catalog
        allowed = gw.service.budgets.allowed(caller, cat.model_ids)
        cards = [ModelCard(id=cat.routing_model, owned_by="switchyard", routing=True)] if allowed else []
        return cards + [
            ModelCard(id=m.id, owned_by=m.provider, tier=m.tier) for m in cat.models if m.id in allowed
        ]

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        caller = await caller_of(request)
        return JSONResponse(ModelList(data=model_cards(caller)).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> JSONResponse:
        """One model (OpenAI's retrieve): ids may contain slashes (``mistralai/Mixtral-...``)."""
        caller = await caller_of(request)
        for card in model_cards(caller):
            if card.id == model_id:
                return JSONResponse(card.model_dump())
        raise ModelNotFound(
            f"the model {model_id!r} does not exist or this API key may not use it (GET /v1/models lists "
            "the ones it may)"
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 while requests are served: ``status`` is ``ok``, or ``degraded`` (the last good
        router restored from the local cache, or no router: the catalog default answers). 503
        only while starting: the first router load has not finished, or the router replica has
        never answered yet."""
        if not gw.started:
            await gw.start()
        try:
            async with asyncio.timeout(gw.health_timeout_s):
                router = await gw.router_status()
        except Exception as exc:  # noqa: BLE001 - a dead or hung router replica
            router = {"loaded": False, "error": f"{type(exc).__name__}: {exc}", "failed_swaps": None}
        if router.get("loaded"):
            gw.router_seen = True
        emitter = gw.service.emitter
        body: dict[str, Any] = {
            "ready": True,
            "status": "ok",
            "router": router,
            "routing": {
                **gw.service.chain.status(),
                **({"follow": gw.follow_status()} if gw.follow_status else {}),
            },
            "rate_limits": gw.limiter.store.status(),
            "emitter": {
                "connected": emitter.connected if emitter else None,
                "queue_depth": emitter.queue_depth if emitter else 0,
                "spooled": emitter.spool.pending if emitter else 0,
            },
        }
        default = gw.service.catalog.default_model
        if router.get("loaded") and router.get("restored"):
            body["status"] = "degraded"
            body["reason"] = f"serving the last good router {router['restored']}: {router.get('last_error')}"
        elif not router.get("loaded"):
            # starting: no load attempt finished yet, or a replica that never answered (still
            # coming up); once a router was seen, an unreachable replica is a degraded gateway
            starting = router.get("failed_swaps") == 0 or ("error" in router and not gw.router_seen)
            if starting:
                return JSONResponse({**NotReady("router not loaded yet").body(), **body, "ready": False}, 503)
            body["status"] = "degraded"
            body["reason"] = (
                "no router: requests are served by the cheap router when held here, else each task's "
                f"learned prior, else the catalog default {default}"
            )
        if not body["rate_limits"]["healthy"] and body["status"] == "ok":
            body["status"] = "degraded"
            body["reason"] = (
                "the shared rate-limit store is failing: limits are counted in this replica only "
                "(each replica admits the full limit) until it answers again"
            )
        return JSONResponse(body)

    if not gw.docs_public:

        @app.get("/openapi.json", include_in_schema=False)
        async def openapi(request: Request) -> JSONResponse:
            """The API description, for key holders (``SWITCHYARD_GATEWAY_DOCS_PUBLIC`` serves it
            and the Swagger UI at /docs to anyone)."""
            await caller_of(request)
            return JSONResponse(app.openapi())

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not gw.metrics_public:  # model names, tasks, spend: not for anyone who can reach the port
            await caller_of(request)
        gw.update_gauges()
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    install(app)  # /openapi.json declares the bodies the handlers read themselves
    return app

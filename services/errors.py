"""The one error hierarchy of the request path.

Each error knows its HTTP status, its OpenAI error ``type`` and ``code`` and the level it is
logged at. The gateway maps them to the OpenAI error body in exactly one place
(``services.gateway.app``); nothing else builds error responses.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar


class SwitchyardError(Exception):
    """Base of every error a client may see. Subclasses set the status, type and code."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    log_level: ClassVar[int] = logging.ERROR

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.counted = False  # already in switchyard_errors_total (the service counts its calls' errors)

    def body(self) -> dict[str, Any]:
        """The OpenAI error body: ``{"error": {"message", "type", "code", "param"}}``."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class BadRequest(SwitchyardError):
    """The request is malformed or asks for something that does not exist (400)."""

    status = 400
    type = "invalid_request_error"
    code = "bad_request"
    log_level = logging.INFO


class UnknownModel(BadRequest):
    code = "model_not_found"


class MaxCostExceeded(BadRequest):
    """No candidate can answer within the request's ``max_cost_usd`` (a hard cap)."""

    code = "max_cost_exceeded"


class UnsupportedParameter(BadRequest):
    """The request needs a parameter the model's upstream kind cannot honour (an Anthropic model
    asked for ``n: 2``, ``logprobs``, ...): 400 naming it, never a silently dropped feature. For
    ``switchyard/auto`` such models are left out of the candidates instead; this is raised only
    when none is left."""

    code = "unsupported_parameter"


class NotFound(SwitchyardError):
    """No such route (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"
    log_level = logging.INFO


class ModelNotFound(NotFound):
    """``GET /v1/models/{id}`` of a model the catalog does not list."""

    code = "model_not_found"


class RequestNotFound(NotFound):
    """Feedback names a call this gateway never issued to this key (forged, mistyped, another's)."""

    code = "request_not_found"


class RequestExpired(NotFound):
    """Feedback names a call older than the join can match."""

    code = "request_expired"


class PermissionDenied(SwitchyardError):
    """The key is valid but may not do this."""

    status = 403
    type = "permission_error"
    code = "permission_denied"
    log_level = logging.INFO


class ClientClosedRequest(SwitchyardError):
    """The client went away before the answer (nginx's 499): not a server error, nobody reads it."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"
    log_level = logging.INFO


class RequestTimeout(SwitchyardError):
    """The request body did not arrive within the body deadline or above the body-rate floor (408;
    the connection is closed, so the ingress slot it held is free again)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    log_level = logging.INFO


class MethodNotAllowed(SwitchyardError):
    """The route exists, the method does not (405)."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    log_level = logging.INFO


class PayloadTooLarge(SwitchyardError):
    """The body is over the configured size limit (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    log_level = logging.INFO


class ValidationFailed(SwitchyardError):
    """The body is JSON but does not match the API's schema: 400, as OpenAI answers a parameter of
    the wrong type or range (``param`` names it)."""

    status = 400
    type = "invalid_request_error"
    code = "validation_error"
    log_level = logging.INFO


class Unauthorized(SwitchyardError):
    """Missing or wrong API key (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    log_level = logging.INFO


class RateLimited(SwitchyardError):
    """The key is over its request rate (429)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    log_level = logging.INFO


class BudgetExceeded(SwitchyardError):
    """A dollar budget of the key or its tenant (per day or per month) is spent (429, OpenAI's
    ``insufficient_quota`` type): the message names which one and when it resets."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    log_level = logging.INFO


class ModelNotAllowed(PermissionDenied):
    """The model is in the catalog, but not in this key's (or its tenant's) model allowlist (403)."""

    code = "model_not_allowed"


class NotReady(SwitchyardError):
    """The gateway is starting or shutting down (503)."""

    status = 503
    type = "server_error"
    code = "not_ready"
    log_level = logging.WARNING


class UpstreamError(SwitchyardError):
    """An upstream failed (after retries and fallbacks): 502 naming the upstream."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    log_level = logging.WARNING

    def __init__(
        self,
        message: str,
        *,
        upstream: str,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        retryable: bool = True,
    ):
        super().__init__(message)
        self.upstream = upstream
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    """An upstream did not answer in time (504 naming the upstream)."""

    status = 504
    code = "upstream_timeout"


class CircuitOpen(UpstreamError):
    """The upstream's circuit breaker is open: the call was not attempted."""

    code = "upstream_unavailable"

    def __init__(self, upstream: str):
        super().__init__(
            f"upstream {upstream} is unavailable (circuit open)", upstream=upstream, retryable=False
        )


class UpstreamRejectedRequest(SwitchyardError):
    """An upstream refused the request itself (its 400, 413 or 422: a parameter it cannot take, a
    prompt over its context window): the caller's request is at fault, so it is a 400 naming the
    upstream, with no fallback to another model (which would answer a different question
    silently) and no breaker failure (the upstream is healthy). 408, 429 and 5xx are the
    upstream's trouble and fall back as before."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected_request"
    log_level = logging.INFO

    def __init__(self, cause: UpstreamError, model: str):
        super().__init__(f"{cause.upstream} refused the request for {model}: {cause.message}")
        self.upstream = cause.upstream
        self.http_status = cause.http_status


REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})


class ContextLengthExceeded(SwitchyardError):
    """The prompt plus ``max_tokens`` does not fit the context window of the requested model, or
    of any candidate (400, OpenAI's code)."""

    status = 400
    type = "invalid_request_error"
    code = "context_length_exceeded"
    log_level = logging.INFO


class AllUpstreamsFailed(UpstreamError):
    """Every model in the fallback order failed; status follows the last failure."""

    def __init__(self, last: UpstreamError, tried: list[str]):
        super().__init__(
            f"all upstreams failed (tried {', '.join(tried)}); last: {last.upstream}: {last.message}",
            upstream=last.upstream,
            http_status=last.http_status,
        )
        self.last = last
        self.tried = tried
        self.status = 504 if isinstance(last, UpstreamTimeout) else 502  # type: ignore[misc]
        self.code = last.code  # type: ignore[misc]

"""What ``/openapi.json`` declares of the gateway's bodies.

The handlers read and validate their bodies themselves (``_read_body`` + ``_parse``: the size
limit and OpenAI-shaped 400s), so FastAPI sees no body parameter and would declare none. The
request bodies are declared here instead, from the pydantic contracts' own JSON schemas (the
same models that validate them), as components referenced from each operation's
``requestBody``; every error response is declared with the OpenAI error body (``ErrorBody``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from services.contracts.api import ChatCompletionRequest, ErrorBody, FeedbackRequest

REF = "#/components/schemas/{model}"
BODIES = (ChatCompletionRequest, FeedbackRequest)

# the error responses each operation can give, all in the OpenAI error body
_ERRORS = {
    400: "Invalid request: bad JSON, a wrong type or range, an unsupported parameter, an upstream's 4xx",
    401: "Missing or unknown API key",
    403: "The key may not do this",
    404: "Unknown model, or (feedback) a request id this key never made",
    413: "The body is over the gateway's size limit",
    429: "Over the key's rate limit or budget",
    502: "Every upstream tried failed",
    503: "Not ready yet",
    504: "Every upstream tried timed out",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=``: each status with its description and the OpenAI error body."""
    return {s: {"model": ErrorBody, "description": _ERRORS[s]} for s in statuses}


def request_body(model: type, description: str) -> dict[str, Any]:
    """FastAPI ``openapi_extra``: a required JSON body of ``model`` (a component)."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
        }
    }


def header_parameters(headers: dict[str, str]) -> dict[str, Any]:
    """FastAPI ``openapi_extra``: the ``X-Switchyard-*`` knob headers, each typed as its knob."""
    knobs = body_schemas()["SwitchyardKnobs"]["properties"]
    return {
        "parameters": [
            {"name": h, "in": "header", "required": False, "schema": knobs[field]}
            for h, field in headers.items()
        ]
    }


def body_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schemas (validation mode) of the request bodies and every model they use, keyed
    by component name, with refs into ``#/components/schemas``."""
    _, top = models_json_schema([(m, "validation") for m in BODIES], ref_template=REF)
    return top.get("$defs", {})


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` carry the request bodies' components (cached like FastAPI's)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in body_schemas().items():
                schemas.setdefault(name, schema)
            spec["components"].setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "The gateway API key: `Authorization: Bearer sk-...`",
            }
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

"""``/openapi.json`` declares the real request bodies (the handlers read them themselves) and the
OpenAI error body of every error response, and is a well-formed OpenAPI 3.1 document whose
schemas are valid JSON Schema (2020-12) and accept and refuse what the gateway does."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from services.contracts.api import ChatCompletionRequest, FeedbackRequest
from services.gateway.app import KNOB_HEADERS, create_app
from services.gateway.bootstrap import build_gateway
from services.gateway.settings import GatewaySettings, hash_key
from services.gateway.testing import FakeRouter

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    router = FakeRouter()
    gw = build_gateway(GatewaySettings(api_key_hashes=[hash_key("sk-openapi")]), router.route, router.status)
    app = create_app(gw)

    async def fetch() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
            r = await client.get("/openapi.json", headers={"authorization": "Bearer sk-openapi"})
            assert r.status_code == 200
            return r.json()

    return asyncio.run(fetch())


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _validator(spec: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of one component, its refs resolved against the whole document."""
    registry = Registry().with_resource("urn:spec", DRAFT202012.create_resource(spec))
    schema = {"$ref": f"urn:spec#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_the_spec_is_well_formed_openapi_3(spec) -> None:
    assert spec["openapi"].startswith("3.1.") and spec["info"]["title"] and spec["info"]["version"]
    for path, item in spec["paths"].items():
        assert path.startswith("/")
        for method, op in item.items():
            assert method in METHODS and op["responses"], (path, method)
            for status in op["responses"]:
                assert status == "default" or (status.isdigit() and 100 <= int(status) < 600)
            for p in op.get("parameters", []):
                assert p["in"] in {"query", "header", "path", "cookie"} and p["name"] and "schema" in p
    schemas = spec["components"]["schemas"]
    for ref in _refs(spec):  # every reference resolves inside the document
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    for schema in schemas.values():  # each is a valid JSON Schema (OpenAPI 3.1's dialect)
        jsonschema.Draft202012Validator.check_schema(schema)
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_both_request_bodies_are_declared(spec) -> None:
    for path, model in [("/v1/chat/completions", ChatCompletionRequest), ("/v1/feedback", FeedbackRequest)]:
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{model.__name__}"
        }
    chat = spec["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert {"switchyard", "stream_options", "temperature", "max_tokens", "tools"} <= set(chat["properties"])
    assert chat["additionalProperties"] is True  # further OpenAI parameters pass through
    knobs = spec["components"]["schemas"]["SwitchyardKnobs"]
    assert set(knobs["properties"]) == {"task", "quality_target", "mode", "max_cost_usd", "tenant", "cache"}
    assert knobs["additionalProperties"] is False
    headers = {p["name"] for p in spec["paths"]["/v1/chat/completions"]["post"]["parameters"]}
    assert headers == set(KNOB_HEADERS)
    feedback = spec["components"]["schemas"]["FeedbackRequest"]
    assert feedback["required"] == ["request_id"] and feedback["additionalProperties"] is False


def test_error_responses_are_the_openai_error_body(spec) -> None:
    for path in ("/v1/chat/completions", "/v1/feedback"):
        responses = spec["paths"][path]["post"]["responses"]
        assert "400" in responses and "401" in responses
        errors = {s: r["content"]["application/json"]["schema"] for s, r in responses.items() if s >= "4"}
        assert all(e == {"$ref": "#/components/schemas/ErrorBody"} for e in errors.values()), errors
    error = spec["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "code", "param"}
    _validator(spec, "ErrorBody").validate(
        {"error": {"message": "m", "type": "invalid_request_error", "code": None, "param": "temperature"}}
    )


@pytest.mark.parametrize(
    "body, ok",
    [
        ({"model": "switchyard/auto", "messages": [{"role": "user", "content": "hi"}]}, True),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "temperature": 0.5,
                "stream": True,
                "stream_options": None,
                "switchyard": {"mode": "cascade", "quality_target": 0.8},
                "logit_bias": {"1": 2},  # an OpenAI parameter Switchyard passes through
            },
            True,
        ),
        ({"model": "m", "messages": []}, False),
        ({"model": "m", "messages": [{"role": "user"}], "temperature": "hot"}, False),
        ({"model": "m", "messages": [{"role": "user"}], "temperature": 3}, False),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": -5}, False),
        ({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}, False),
        ({"model": "m", "messages": [{"role": "user"}], "stream_options": "x"}, False),
        ({"model": "m", "messages": [{"role": "user"}], "switchyard": {"mood": "x"}}, False),
    ],
)
def test_the_declared_chat_body_accepts_and_refuses_as_the_gateway_does(spec, body, ok) -> None:
    errors = list(_validator(spec, "ChatCompletionRequest").iter_errors(body))
    assert (not errors) is ok, errors
    if ok:
        ChatCompletionRequest.model_validate(body)


def test_the_declared_feedback_body(spec) -> None:
    v = _validator(spec, "FeedbackRequest")
    assert v.is_valid({"request_id": "req_1", "score": 0.5, "source": "judge"})
    assert not v.is_valid({"request_id": "req_1", "score": 2})
    assert not v.is_valid({"request_id": "req_1", "label": "good", "extra": 1})

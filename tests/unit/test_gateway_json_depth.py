"""JSON nested deeper than ``MAX_JSON_DEPTH`` is a 400 before anything is routed or sent upstream
(the fuzzer found objects nested ~1,000 deep that parsed here and broke the upstream's parser: a
502), and bodies within the limit parse as before, by either path."""

from __future__ import annotations

import pytest

from services.contracts.api import ChatCompletionRequest
from services.errors import BadRequest, ValidationFailed
from services.gateway.app import MAX_JSON_DEPTH, _parse

HI = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"x":'


@pytest.mark.parametrize("open_, close", [(b'{"a":', b"}"), (b"[", b"]")])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 900, 5000])
def test_nesting_over_the_limit_is_a_400(open_: bytes, close: bytes, depth: int) -> None:
    raw = HI + open_ * depth + b"1" + close * depth + b"}"
    with pytest.raises(BadRequest, match="nested too deeply"):
        _parse(ChatCompletionRequest, raw)


def test_bodies_within_the_limit_parse_by_either_path() -> None:
    nested = b'{"a":' * (MAX_JSON_DEPTH - 2) + b"1" + b"}" * (MAX_JSON_DEPTH - 2)
    assert _parse(ChatCompletionRequest, HI + nested + b"}").model_extra["x"]
    many = b",".join([b'{"role":"user","content":[{"type":"text","text":"hi"}]}'] * 200)  # many brackets
    req = _parse(ChatCompletionRequest, b'{"model":"m","messages":[' + many + b"]}")
    assert len(req.messages) == 200


@pytest.mark.parametrize(
    "number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1E+400", b"1" + b"0" * 400 + b".0"]
)
def test_a_number_that_is_not_finite_is_a_400_wherever_it_is(number: bytes) -> None:
    # a passed-through parameter is not typed here: the gateway could not encode it upstream (a 500)
    for raw in (HI + number + b"}", HI + b'{"y":[' + number + b"]}}"):
        with pytest.raises(BadRequest, match="not finite"):
            _parse(ChatCompletionRequest, raw)
    with pytest.raises(ValidationFailed) as typed:  # a typed field says which one
        _parse(ChatCompletionRequest, HI + b'1,"temperature":' + number + b"}")
    assert typed.value.param == "temperature"


def test_nan_in_text_is_only_text() -> None:
    req = _parse(
        ChatCompletionRequest, b'{"model":"m","messages":[{"role":"user","content":"NaN Infinity 1e999"}]}'
    )
    assert req.messages[0].content == "NaN Infinity 1e999"

"""JSON nested deeper than ``MAX_JSON_DEPTH`` is a 400 before anything is routed or sent upstream
(the fuzzer found objects nested ~1,000 deep that parsed here and broke the upstream's parser: a
502), and bodies within the limit parse as before, by either path."""

from __future__ import annotations

import pytest

from services.contracts.api import ChatCompletionRequest
from services.errors import BadRequest
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

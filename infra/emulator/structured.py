"""Tool calls and JSON answers of the emulator, deterministic: the same request always gets the
same call. A recorded answer is text, so structure is built from the request's own schemas:
every property is filled by its type (strings with the question for a tool call, with the
recorded answer for a JSON answer; a free-form object is ``{"answer": <recorded answer>}``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolSpec:
    """A tool the request offers, protocol-neutral: its name and its JSON schema."""

    name: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """The call the emulator answers with."""

    id: str  # without a protocol prefix (``call_`` / ``toolu_``)
    name: str
    input: dict[str, Any]

    @property
    def arguments(self) -> str:
        """The input as OpenAI's ``arguments`` string."""
        return json.dumps(self.input, separators=(",", ":"), ensure_ascii=False)


def fill(schema: Any, text: str, answer: str) -> Any:
    """A value that matches ``schema``: strings are ``text``, numbers 0, booleans false, arrays one
    item, enums their first value; an object without declared properties is ``{"answer": answer}``."""
    if not isinstance(schema, dict):
        return {"answer": answer}
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return fill(schema[key][0], text, answer)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {"answer": answer}
        return {k: fill(v, text, answer) for k, v in props.items()}
    if kind == "array":
        return [fill(schema["items"], text, answer)] if isinstance(schema.get("items"), dict) else []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return text


def tool_call(tools: tuple[ToolSpec, ...], forced: str | None, question: str, answer: str) -> ToolCall:
    """The call to ``forced`` (else the first tool), its arguments filled from its schema."""
    tool = next((t for t in tools if t.name == forced), tools[0])
    digest = hashlib.sha256(f"{tool.name}\n{question}".encode()).hexdigest()[:24]
    args = fill(tool.schema, question, answer)
    return ToolCall(digest, tool.name, args if isinstance(args, dict) else {"value": args})


def json_answer(schema: dict[str, Any], answer: str) -> str:
    """The recorded answer as a JSON document that matches ``schema``."""
    return json.dumps(fill(schema, answer, answer), ensure_ascii=False)


def pieces(text: str, size: int = 12) -> list[str]:
    """``text`` in stream-sized slices that concatenate back to it."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]

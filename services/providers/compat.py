"""Which catalog models can honour a request's OpenAI parameters: the compatibility matrix of
docs/api.md as code. OpenAI-compatible upstreams take every parameter as sent; an Anthropic
upstream takes what :mod:`.anthropic_translate` translates and nothing else. The gateway uses this
to refuse a pass-through request a model cannot honour (400 naming the parameter) and to leave
such models out of a routed request's candidates and fallbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.catalog import Catalog

from . import anthropic_translate
from .base import Unsupported

CHECKS: dict[str, Callable[[dict[str, Any]], list[Unsupported]]] = {
    "openai": lambda payload: [],
    "anthropic": anthropic_translate.unsupported,
}


def unsupported(kind: str, payload: dict[str, Any]) -> list[Unsupported]:
    """The parameters of an OpenAI chat body that an upstream of ``kind`` cannot honour."""
    return CHECKS[kind](payload)


def incapable_models(catalog: Catalog, payload: dict[str, Any]) -> dict[str, Unsupported]:
    """Every catalog model that cannot honour ``payload``, with the first reason (checked once per
    provider kind)."""
    by_kind: dict[str, list[Unsupported]] = {}
    out: dict[str, Unsupported] = {}
    for m in catalog.models:
        kind = catalog.provider(m.provider).kind
        if kind not in by_kind:
            by_kind[kind] = unsupported(kind, payload)
        if by_kind[kind]:
            out[m.id] = by_kind[kind][0]
    return out

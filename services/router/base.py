"""The one router interface every router implements (RouteLLM-style name registry)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Query:
    """What a router sees of a request: the prompt (last user turn + bounded context) and task."""

    prompt: str
    task: str | None = None


@runtime_checkable
class Router(Protocol):
    """``scores(queries)`` returns, per query, ``{model_id: P(answer acceptable)}`` for every
    model the router knows; ``version`` identifies the trained artefact."""

    version: str

    @property
    def models(self) -> list[str]: ...

    def scores(self, queries: Sequence[Query]) -> list[dict[str, float]]: ...

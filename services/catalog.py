"""The model catalog: models, tiers, prices, providers and fallback chains, from one YAML file.

Validated with pydantic; a broken file raises :class:`CatalogError` that names the file and the
field, never a bare traceback.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_CATALOG = "catalog.yaml"


class CatalogError(ValueError):
    """The catalog file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per 1M tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        fresh = max(prompt_tokens - cached_tokens, 0)
        return (fresh * self.input + cached_tokens * cached_rate + completion_tokens * self.output) / 1e6


class Provider(_Strict):
    name: str
    kind: Literal["openai", "anthropic"] = "openai"
    base_url: str
    api_key_env: str | None = Field(
        default=None, description="Env var holding the key; never the key itself."
    )
    timeout_connect_s: float = Field(default=2.0, gt=0)
    timeout_first_token_s: float = Field(default=20.0, gt=0)
    timeout_total_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)


class ModelEntry(_Strict):
    id: str = Field(description="The id clients and the router use (the benchmark column name).")
    provider: str
    upstream_model: str | None = Field(default=None, description="Model name sent upstream; default id.")
    tier: str
    price: Price
    reasoning_switch: bool = False
    fallbacks: list[str] = Field(default_factory=list)
    context_window: int | None = Field(
        default=None,
        ge=1,
        description="Tokens the model takes (prompt + completion); unset: not checked. A request "
        "that does not fit goes to the next candidate that does, or is a 400 when none does.",
    )

    @property
    def upstream(self) -> str:
        return self.upstream_model or self.id


class TaskDefaults(_Strict):
    quality_target: float = Field(default=0.95, ge=0, le=1)
    mode: Literal["route", "cascade", "hybrid"] = "route"
    candidates: list[str] | None = None


class Catalog(_Strict):
    providers: list[Provider]
    tiers: list[str] = Field(description="Tier names, cheapest first.")
    models: list[ModelEntry]
    strong_model: str = Field(description="The reference model quality targets are relative to.")
    default_model: str = Field(description="Served when the router fails.")
    routing_model: str = "switchyard/auto"
    defaults: TaskDefaults = Field(default_factory=TaskDefaults)
    tasks: dict[str, TaskDefaults] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        providers = {p.name for p in self.providers}
        ids = [m.id for m in self.models]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"duplicate model ids: {sorted(dupes)}")
        known = set(ids)
        for m in self.models:
            if m.provider not in providers:
                raise ValueError(
                    f"model {m.id!r}: unknown provider {m.provider!r} (known: {sorted(providers)})"
                )
            if m.tier not in self.tiers:
                raise ValueError(f"model {m.id!r}: unknown tier {m.tier!r} (tiers: {self.tiers})")
            bad = [f for f in m.fallbacks if f not in known]
            if bad:
                raise ValueError(f"model {m.id!r}: unknown fallback models {bad}")
        for name in ("strong_model", "default_model"):
            if getattr(self, name) not in known:
                raise ValueError(f"{name} {getattr(self, name)!r} is not a catalog model")
        for task, d in {"defaults": self.defaults, **self.tasks}.items():
            bad = [c for c in (d.candidates or []) if c not in known]
            if bad:
                raise ValueError(f"task {task!r}: unknown candidate models {bad}")
        return self

    def fallback_chain(self, model_id: str) -> list[str]:
        """Every model ``model_id`` may fall back to, transitively, breadth first (the pool's order)."""
        chain: list[str] = []
        queue = list(self.model(model_id).fallbacks)
        while queue:
            m = queue.pop(0)
            if m != model_id and m not in chain:
                chain.append(m)
                queue += self.model(m).fallbacks
        return chain

    def resilience_warnings(self) -> list[str]:
        """Models whose requests fail outright when their upstream fails: no fallback at all, or
        fallbacks on the same provider only (one provider outage takes them all)."""
        out = []
        for m in self.models:
            chain = self.fallback_chain(m.id)
            if not chain:
                out.append(f"model {m.id!r} has no fallback: its requests fail whenever {m.provider} does")
            elif all(self.model(f).provider == m.provider for f in chain):
                out.append(
                    f"model {m.id!r} falls back only to models on its own provider {m.provider!r} "
                    f"({', '.join(chain)}): an outage of {m.provider} fails its requests"
                )
        return out

    def model(self, model_id: str) -> ModelEntry:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(model_id)

    def provider(self, name: str) -> Provider:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]

    def task_defaults(self, task: str) -> TaskDefaults:
        return self.tasks.get(task, self.defaults)

    def tier_rank(self, model_id: str) -> int:
        return self.tiers.index(self.model(model_id).tier)

    def blended_price(self, model_id: str) -> float:
        """USD per 1M tokens, input and output averaged: a price to rank models by."""
        p = self.model(model_id).price
        return (p.input + p.output) / 2


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Load and validate a catalog YAML; ``None`` loads the built-in default."""
    try:
        if path is None:
            text = resources.files("services").joinpath(DEFAULT_CATALOG).read_text(encoding="utf-8")
            where = f"<built-in {DEFAULT_CATALOG}>"
        else:
            where = str(path)
            text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {where} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"catalog {where} must be a mapping at the top level")
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()]
        raise CatalogError(f"catalog {where} is invalid:\n  " + "\n  ".join(lines)) from exc

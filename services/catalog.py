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
    """USD per 1M tokens. Prompt tokens count as OpenAI counts them: cached ones included; of
    those, the ones read from the provider's prompt cache cost ``cached_input`` and the ones
    written to it (Anthropic's cache creation) ``cache_write``; unset, either is ``input``."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="Prompt tokens read from cache.")
    cache_write: float | None = Field(
        default=None, ge=0, description="Prompt tokens written to the cache (Anthropic: 1.25x input)."
    )

    def cost(
        self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0
    ) -> float:
        """USD for a call; ``cached_tokens`` and ``cache_write_tokens`` are part of ``prompt_tokens``."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        written = min(max(cache_write_tokens, 0), prompt_tokens - cached)
        fresh = prompt_tokens - cached - written
        return (
            fresh * self.input
            + cached * self.cached_rate
            + written * self.write_rate
            + completion_tokens * self.output
        ) / 1e6

    @property
    def cached_rate(self) -> float:
        return self.cached_input if self.cached_input is not None else self.input

    @property
    def write_rate(self) -> float:
        return self.cache_write if self.cache_write is not None else self.input

    def effective_input(self, cached_share: float = 0.0) -> float:
        """USD per 1M prompt tokens when a ``cached_share`` of them is read from the prompt cache:
        ``(1 - s) * input + s * cached_input`` (what a task's repeated prefixes make a token cost)."""
        return (1.0 - cached_share) * self.input + cached_share * self.cached_rate

    def blended(self, cached_share: float = 0.0) -> float:
        """USD per 1M tokens, input (at ``cached_share``) and output averaged: the price models and
        the offers of one model are ranked by."""
        return (self.effective_input(cached_share) + self.output) / 2

    def expected_cost(self, prompt_tokens: int, completion_tokens: int, cached_share: float = 0.0) -> float:
        """USD expected for a call when ``cached_share`` of its prompt is a cache read."""
        return (prompt_tokens * self.effective_input(cached_share) + completion_tokens * self.output) / 1e6


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


class Offer(_Strict):
    """One provider selling a model: its price and the name the model has there. The pool buys
    from the cheapest healthy offer (``services/providers/arbitrage.py``)."""

    provider: str
    price: Price
    upstream_model: str | None = Field(
        default=None, description="Model name sent to this provider; default the model's own."
    )


class ModelEntry(_Strict):
    id: str = Field(description="The id clients and the router use (the benchmark column name).")
    provider: str = Field(description="The listed offer's provider (its price is what routing ranks by).")
    upstream_model: str | None = Field(default=None, description="Model name sent upstream; default id.")
    tier: str
    price: Price
    offers: list[Offer] = Field(
        default_factory=list,
        description="More providers selling the same model, besides the listed provider/price.",
    )
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

    @property
    def all_offers(self) -> list[Offer]:
        """Every offer of the model, the listed one (``provider``/``price``) first, each with its
        upstream model name resolved. Built on each use (fields already validated), so a copy of
        the entry never carries stale offers."""

        def named(provider: str, price: Price) -> Offer:
            return Offer.model_construct(provider=provider, price=price, upstream_model=self.upstream)

        more = [o if o.upstream_model else named(o.provider, o.price) for o in self.offers]
        return [named(self.provider, self.price), *more]


class TaskDefaults(_Strict):
    quality_target: float = Field(default=0.95, ge=0, le=1)
    mode: Literal["route", "cascade", "hybrid"] = "route"
    candidates: list[str] | None = None
    cached_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Expected share of this task's prompt tokens read from the providers' prompt "
        "caches (shared system prompts, few-shot prefixes): the router compares candidates at "
        "(1 - s) * input + s * cached_input.",
    )


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
            sellers = [m.provider, *(o.provider for o in m.offers)]
            for name in sellers:
                if name not in providers:
                    raise ValueError(
                        f"model {m.id!r}: unknown provider {name!r} (known: {sorted(providers)})"
                    )
            if len(set(sellers)) < len(sellers):
                raise ValueError(f"model {m.id!r}: more than one offer from the same provider: {sellers}")
            kinds = {self.provider(name).kind for name in sellers}
            if len(kinds) > 1:  # what a request may ask of a model is checked per protocol kind
                raise ValueError(
                    f"model {m.id!r}: its offers speak different protocols {sorted(kinds)}; "
                    "every seller of a model must be of its listed provider's kind"
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
            if m.offers:
                continue  # another provider sells the same model: the pool fails over to it
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

    def offer(self, model_id: str, provider: str) -> Offer:
        """``model_id`` as sold by ``provider`` (KeyError when that provider does not sell it)."""
        for o in self.model(model_id).all_offers:
            if o.provider == provider:
                return o
        raise KeyError(f"{provider}/{model_id}")

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

    def blended_price(self, model_id: str, task: str | None = None) -> float:
        """USD per 1M tokens, input and output averaged: a price to rank models by. With a
        ``task``, the input price is the one at that task's expected cached share."""
        return self.model(model_id).price.blended(self.cached_share(task))

    def cached_share(self, task: str | None) -> float:
        """The expected cached share of ``task``'s prompt tokens (0 without a task)."""
        return self.task_defaults(task).cached_share if task is not None else 0.0


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

"""Gateway settings (``SWITCHYARD_GATEWAY_*``): built in entrypoints, passed to deployments."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .budgets import BudgetConfig
from .semcache import TaskCachePolicy


def hash_key(key: str) -> str:
    """The stored form of an API key: hex SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _is_sha256_hex(h: str) -> bool:
    return len(h) == 64 and all(c in "0123456789abcdef" for c in h.lower())


class GatewaySettings(BaseSettings):
    """Everything the gateway needs at start; runtime-changing values travel in ``user_config``."""

    # hide_input_in_errors: a rejected value (a store URL with its password, a malformed key list)
    # is never echoed into a validation error, which ends up in logs
    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_GATEWAY_", env_file=None, extra="ignore", hide_input_in_errors=True
    )

    catalog_path: Path | None = Field(default=None, description="Catalog YAML; default the built-in one.")
    router_ref: str = Field(
        default="models:/switchyard-router@champion",
        description="Router model: an MLflow alias the replicas follow (models:/name@alias), a pinned "
        "version (models:/name/N) or a local path.",
    )
    router_poll_s: float = Field(
        default=5.0,
        ge=0,
        description="Every replica re-resolves the router alias this often and swaps to the version "
        "it points at (load, smoke check, atomic swap; a failing version is never served); 0: once.",
    )
    host: str = Field(default="127.0.0.1", description="The HTTP address the gateway serves on.")
    port: int = Field(default=8000, ge=1, le=65535, description="The HTTP port the gateway serves on.")
    state_dir: Path = Field(default=Path(".state"), description="Ray temp dir and the spool live here.")
    spool_dir: Path | None = Field(
        default=None, description="Event spool; default <state_dir>/gateway/spool."
    )
    # auth and limits
    api_key_hashes: list[str] = Field(default_factory=list, description="Hex SHA-256 of accepted API keys.")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Plain API keys (from a secret env var); hashed at start, never logged.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without an API key. Off: it needs one (it names models, tasks and "
        "spend); scrape Ray's metrics port instead (fleet-wide, internal: docs/k8s.md).",
    )
    docs_public: bool = Field(
        default=False,
        description="Serve /docs, /redoc and /openapi.json to anyone. Off: no Swagger UI, and "
        "/openapi.json needs an API key.",
    )
    metric_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks that get their own metric label besides the catalog's and the serving router's; "
        "any other task a client names is counted as 'other' (bounded series).",
    )
    key_tenants: dict[str, str] = Field(
        default_factory=dict,
        description="Tenant of each key, by the key's SHA-256 hex: events carry it and keys of one tenant "
        "may grade each other's calls. A key not listed is a tenant of its own (its id).",
    )
    judge_key_hashes: list[str] = Field(
        default_factory=list,
        description="Hex SHA-256 of keys with the judge role (accepted as API keys too): they may give "
        "feedback on any tenant's calls and with source judge or rule; other keys only on their own "
        "calls, as user.",
    )
    id_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs request ids (tenant and issue time), so feedback on a forged, "
        "foreign or expired id is a 404 in any replica. Every ingress replica must share it: set it "
        "in a fleet; unset, a key file <state_dir>/gateway/id.key (0600) is created once.",
    )
    feedback_max_age_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="Feedback on a call older than this is a 404 (expired): keep it equal to the streams "
        "join's SWITCHYARD_STREAMS_JOIN_TTL_S, past which it could not be joined anyway.",
    )
    rate_limit_rps: float = Field(default=0.0, ge=0, description="Requests/s per key; 0 = unlimited.")
    rate_limit_burst: int = Field(default=0, ge=0, description="Bucket size; default 2 × rate (at least 1).")
    max_body_bytes: int = Field(default=1_000_000, gt=0, description="Larger request bodies get a 413.")
    body_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="A request body must arrive whole within this many seconds of its headers, or the "
        "request gets a 408 and its connection is closed (the ingress slot it held is freed). 0 = off.",
    )
    body_min_bytes_per_s: float = Field(
        default=1024.0,
        ge=0,
        description="Body-rate floor: after BODY_GRACE_S a body must have come at this average rate "
        "(bytes/s since its headers), else 408 as for BODY_TIMEOUT_S; a stalled body is cut after about "
        "the grace. 0 = off.",
    )
    body_grace_s: float = Field(
        default=2.0, ge=0, description="Seconds a body may take before the rate floor applies."
    )
    keep_alive_timeout_s: int = Field(
        default=15,
        ge=1,
        description="An idle keep-alive connection is closed after this many seconds (Serve's "
        "http_options.keep_alive_timeout_s, set by `switchyard serve`; keep it above the idle timeout "
        "of a load balancer in front). A header timeout is not settable: see docs/operations.md.",
    )
    auth_failures_per_minute: float = Field(
        default=30.0,
        ge=0,
        description="Failed authentications one source address may make a minute (burst the same); "
        "past it every request from that address gets a 429 until the budget refills. 0 = off.",
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="Where rate limits, failed-auth limits, budgets and the exploration budget are counted: "
        "memory:// (each ingress replica alone: N replicas admit N × each limit) or "
        "redis://host:port/db (rediss:// for TLS; Valkey too), shared by every replica. A password in "
        "the URL is never logged; prefer RATE_LIMIT_STORAGE_PASSWORD.",
    )
    rate_limit_storage_password: SecretStr | None = Field(
        default=None, description="Password of the shared rate-limit store (from a secret; never logged)."
    )
    rate_limit_storage_timeout_s: float = Field(
        default=0.1,
        gt=0,
        description="Longest wait on the shared store per operation; past it, or on any store error, "
        "the replica counts limits in its own memory (fail open) until the store answers again.",
    )
    rate_limit_storage_retry_s: float = Field(
        default=5.0,
        gt=0,
        description="After a store failure, how long a replica counts in its own memory before it "
        "tries the shared store again.",
    )
    redact_prompts: bool = Field(
        default=False,
        description="Keep no user text in events: prompts become their keyed hashes only, feedback "
        "comments are dropped. Off by default: the closed loop distils hard queries from their text "
        "(with it on it can only restore prompts it has in its benchmark rows); turn it on where "
        "prompts must not be stored (docs/api.md, Privacy).",
    )
    access_log: bool = Field(
        default=False, description="Serve's per-request access log lines (costly on CPU)."
    )
    # events
    events_enabled: bool = Field(default=True, description="Log every call and feedback to Kafka.")
    emitter_queue_size: int = Field(
        default=10000, gt=0, description="Events held in memory before the emitter spools to disk."
    )
    # router deployment
    router_replicas: int = Field(default=1, ge=1, description="Router deployment replicas.")
    router_num_gpus: float = Field(default=0.0, ge=0, description="GPU share per router replica; 0 = CPU.")
    router_num_cpus: float = Field(default=0.5, ge=0, description="Ray CPUs reserved per router replica.")
    router_batch_size: int = Field(default=32, ge=1, description="Most requests one router call scores.")
    router_batch_wait_s: float = Field(
        default=0.0,
        ge=0,
        description="Wait for more requests before scoring a batch; 0 = score what is queued now "
        "(requests that arrive while a batch is scored form the next one).",
    )
    router_threads: int = Field(
        default=0,
        ge=0,
        description="Intra-op threads of the router's encoder (torch / ONNX Runtime); 0 = Ray's "
        "default for the replica (its whole CPUs, at least 1). More than 1 only pays on idle cores.",
    )
    router_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="Budget of the router deployment's answer; past it (or when its queue cannot meet "
        "it) the request degrades to the cheap router, then the task's prior, then the catalog default.",
    )
    router_placement: Literal["auto", "ingress", "deployment"] = Field(
        default="auto",
        description="Where the serving router scores: ingress (in each ingress process, no Ray hop; "
        "only a cheap static-encoder router), deployment (the router replicas), or auto (ingress when "
        "the artefact is a static router and the router has no GPU, else deployment).",
    )
    cheap_router_ref: str | None = Field(
        default=None,
        description="A static-encoder router held in every ingress replica as the degradation stage "
        "when the serving router runs in the deployment (e.g. the transformer on GPU). Unset: none.",
    )
    prior_half_life: int = Field(
        default=500,
        ge=1,
        description="Decisions of a task after which an older one weighs half in its learned prior.",
    )
    prior_min_decisions: int = Field(
        default=20,
        ge=1,
        description="Learned decisions a task needs before its prior answers when no router does "
        "(else the mix of all tasks, else the catalog default).",
    )
    ingress_replicas: int = Field(default=1, ge=1, description="HTTP ingress replicas.")
    ingress_num_cpus: float = Field(default=0.5, ge=0, description="Ray CPUs reserved per ingress replica.")
    ingress_max_ongoing_requests: int = Field(
        default=1024,
        ge=1,
        description="Requests one ingress replica serves at once (Serve queues the rest before the "
        "app). At rate r and upstream latency L about r × L are in flight: 300/s at 1.5 s is 450.",
    )
    upstream_max_connections: int = Field(
        default=1024,
        ge=1,
        description="Open connections per upstream provider and ingress replica; calls past it wait "
        "for one. Keep it at least INGRESS_MAX_ONGOING_REQUESTS.",
    )
    direct_ingress: bool = Field(
        default=False,
        description="Ray Serve direct ingress on a Ray this process starts: the ChatIngress replica "
        "serves HTTP on the gateway port itself (no proxy actor, no hop through it); one ingress "
        "replica per node.",
    )
    # providers
    retry_initial_s: float = Field(default=0.05, gt=0, description="First retry backoff (exponential).")
    retry_max_s: float = Field(default=2.0, gt=0, description="Longest retry backoff.")
    max_retry_after_s: float = Field(
        default=5.0, ge=0, description="A longer upstream Retry-After falls back to the next model instead."
    )
    breaker_failure_rate: float = Field(
        default=0.5, gt=0, le=1, description="Share of failed calls in the window that opens a breaker."
    )
    breaker_min_calls: int = Field(
        default=20, ge=1, description="Calls the window must hold before its failure share can open it."
    )
    breaker_window_s: float = Field(default=10.0, gt=0, description="The breaker's rolling window.")
    breaker_reset_s: float = Field(default=5.0, gt=0, description="How long an open breaker stays open.")
    breaker_half_open_probes: int = Field(
        default=5, ge=1, description="Probe calls a half-open breaker admits; their failure share decides."
    )
    max_models_per_request: int = Field(
        default=4, ge=1, description="Most models one request may try (fallbacks and cascade rungs)."
    )
    arbitrage: bool = Field(
        default=True,
        description="Buy a model sold by several providers (catalog offers) from the cheapest healthy "
        "one, failing over by price; off: its listed provider only (docs/arbitrage.md).",
    )
    arbitrage_slow_factor: float = Field(
        default=3.0,
        ge=1,
        description="An offer this many times slower than a model's fastest is tried after the others...",
    )
    arbitrage_slow_min_gap_s: float = Field(
        default=0.5, ge=0, description="...when also at least this many seconds slower (recent latency EWMA)."
    )
    arbitrage_latency_ttl_s: float = Field(
        default=30.0, gt=0, description="Seconds after its last call that an offer's latency is forgotten."
    )
    providers_transport: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description="The upstream wire: aiohttp (far less CPU per call) or httpx's own httpcore.",
    )
    # cascade
    judge_model: str | None = Field(default="switchyard/judge", description="Judge for cascades; None = off.")
    judge_provider: str = Field(default="emulator-openai", description="The catalog provider of the judge.")
    cascade_accept: float = Field(default=0.5, ge=0, le=1, description="Scorer confidence needed to accept.")
    hard_query_margin: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Router margin below which a query counts as hard (reasoning on).",
    )
    # budgeted exploration (docs/api.md "Exploration")
    # the semantic cache (docs/cache.md)
    cache_enabled: bool = Field(
        default=False,
        description="Serve repeated and near-duplicate questions from the semantic cache (per tenant, "
        "model, conversation and parameters; only answers judged good). Off by default: switch it on "
        "once the per-task false-hit figures suit you (docs/cache.md). A request opts out with "
        "X-Switchyard-Cache: off or switchyard.cache=false.",
    )
    cache_capacity: int = Field(default=10_000, ge=1, description="Answers each ingress replica keeps (LRU).")
    cache_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Cosine similarity a near-duplicate needs to be served; default the cache's measured "
        "choice (docs/cache.md, 'Threshold curve'). Exact repeats always count.",
    )
    cache_ttl_s: float = Field(default=86_400.0, gt=0, description="How long a stored answer is served (s).")
    cache_tasks: dict[str, TaskCachePolicy] = Field(
        default_factory=dict,
        description='Per-task overrides as JSON: {<task>: {"threshold": 0.97, "ttl_s": 600, '
        '"enabled": false}}.',
    )
    cache_shared: bool = Field(
        default=True,
        description="With a redis:// CACHE_STORAGE (default: RATE_LIMIT_STORAGE), every ingress replica "
        "shares the cache's entries and feedback through it (each still searches its own index); else "
        "each replica has its own.",
    )
    cache_storage: str | None = Field(
        default=None,
        description="The shared cache's own redis:// store; default RATE_LIMIT_STORAGE. Give the cache its "
        "own in production: its answers would otherwise compete with the limit counters for the store's "
        "memory (docs/k8s.md).",
    )
    cache_storage_password: SecretStr | None = Field(
        default=None, description="CACHE_STORAGE's password, when it needs one and is not in the URL."
    )
    cache_confirm_score: float = Field(
        default=0.8,
        ge=0.5,
        le=1,
        description="Feedback at or above this score (or label good) admits a non-strong-tier answer "
        "to the cache; below 0.5 (or label bad) keeps it out for good.",
    )
    cache_pending_ttl_s: float = Field(
        default=3_600.0,
        gt=0,
        description="How long an answer waits for a positive signal before it is dropped (s).",
    )

    explore_enabled: bool = Field(
        default=True,
        description="Budgeted exploration: shadow calls to a cheaper model, graded by the judge, for "
        "tasks routed mostly to the top tier (needs the judge; off without one).",
    )
    explore_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Share of an exploration candidate task's routed requests that also get a shadow call.",
    )
    explore_expensive_share: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="A task is an exploration candidate when at least this share of its recent routed "
        "requests were answered by the catalog's top tier.",
    )
    explore_min_requests: int = Field(
        default=50,
        ge=1,
        description="Routed requests a task's window must hold before it can be a candidate.",
    )
    explore_window_requests: int = Field(
        default=200, ge=1, description="The sliding window of a task's routed requests (per replica)."
    )
    explore_budget_usd_per_task_hour: float = Field(
        default=0.25,
        ge=0,
        description="Most USD a task's shadow calls and their judge calls may cost over any hour, split "
        "evenly across the ingress replicas (estimates count before a call, actual costs after).",
    )
    explore_max_concurrency: int = Field(
        default=4, ge=1, description="Shadow calls running at once per replica; more are skipped ('busy')."
    )
    explore_judge_usd_per_mtok: float | None = Field(
        default=None,
        ge=0,
        description="Price of the judge's calls (USD per 1M tokens) when the catalog does not list the "
        "judge model; default the strong model's price.",
    )

    # budgets and model allowlists per key and tenant (docs/operations.md "Budgets and allowlists")
    budgets: BudgetConfig | None = Field(
        default=None,
        description='Budgets and model allowlists, as JSON: {"keys": {<key id or SHA-256 hex, or *>: '
        'LIMITS}, "tenants": {<tenant>: LIMITS}}, LIMITS holding any of usd_per_day, usd_per_month '
        "(UTC calendar periods), tokens_per_minute and models (an allowlist of catalog models). Counted "
        "in RATE_LIMIT_STORAGE (shared by the fleet with redis://); over a budget: 429.",
    )
    budgets_file: Path | None = Field(
        default=None,
        description="The same configuration as BUDGETS from a YAML or JSON file, read at start (set one "
        "of the two).",
    )
    budget_completion_tokens: int = Field(
        default=1024,
        ge=1,
        description="A request without max_tokens whose key has a budget or TPM limit is sent upstream "
        "with this max_tokens and reserves that many completion tokens per model it may call; settled "
        "to the actual tokens after the call.",
    )

    @model_validator(mode="after")
    def _budget_file(self) -> GatewaySettings:
        if self.budgets_file is not None:
            from .budgets import load_budget_file

            loaded = load_budget_file(self.budgets_file)
            if self.budgets is not None and not self.budgets.empty and self.budgets != loaded:
                raise ValueError("set one of budgets and budgets_file, not both")
            self.budgets = loaded
        return self

    @field_validator("rate_limit_storage")
    @classmethod
    def _store_url(cls, v: str) -> str:
        from .ratelimit import check_store_url

        return check_store_url(v.strip())

    @field_validator("cache_storage")
    @classmethod
    def _cache_store_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.strip().startswith(("redis://", "rediss://")):
            raise ValueError("cache_storage is a redis:// or rediss:// URL (Redis or Valkey)")
        return v.strip()

    @field_validator("api_key_hashes", "judge_key_hashes")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        if not all(map(_is_sha256_hex, v)):
            raise ValueError("key hashes must be hex SHA-256 digests (64 hex characters)")
        return [h.lower() for h in v]

    @field_validator("key_tenants")
    @classmethod
    def _tenant_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for h, tenant in v.items():
            if not _is_sha256_hex(h):
                raise ValueError("key_tenants maps key hashes (64 hex characters) to tenant names")
            if not tenant.strip() or len(tenant) > 128:
                raise ValueError("a tenant name is 1-128 characters")
        return {h.lower(): t for h, t in v.items()}

    def key_hashes(self) -> list[str]:
        """Every accepted key, hashed (judge keys included)."""
        return sorted(
            {
                *self.api_key_hashes,
                *self.judge_key_hashes,
                *(hash_key(k.get_secret_value()) for k in self.api_keys),
            }
        )

    def request_id_secret(self) -> bytes:
        """The request-id signing secret: configured (here or in this process's environment: the
        replicas do not receive it in their settings), else the local key file."""
        import os

        from .identity import load_secret

        configured = self.id_secret.get_secret_value() if self.id_secret else None
        configured = configured or os.environ.get("SWITCHYARD_GATEWAY_ID_SECRET") or None
        return load_secret(configured, self.state_dir.resolve() / "gateway" / "id.key")

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or self.state_dir / "gateway" / "spool"

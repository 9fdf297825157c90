"""Budgets and model allowlists per API key and tenant (docs/operations.md, "Budgets and
allowlists").

What a key or a tenant may spend, configured in ``SWITCHYARD_GATEWAY_BUDGETS`` (or the file
``SWITCHYARD_GATEWAY_BUDGETS_FILE``), validated into :class:`BudgetConfig`:

- ``usd_per_day`` / ``usd_per_month``: dollars of upstream cost per UTC calendar day / month;
- ``tokens_per_minute``: prompt + completion tokens per clock minute (UTC);
- ``models``: the catalog models the key may use (``switchyard/auto`` routes among them only).

Keys are named by their id (the first 12 hex characters of the key's SHA-256, what events and logs
call the key) or by the whole SHA-256 as ``SWITCHYARD_GATEWAY_KEY_TENANTS`` names them; ``"*"``
gives every key without its own entry the same limits (each key counting its own). Tenants come
from the key's configuration (``KEY_TENANTS``), never from anything the client sends; a key
without a configured tenant has only its key limits. A call must fit every limit that applies.

Enforcement is shared by the fleet: every limit is a plain counter per calendar period in the
:class:`~services.gateway.ratelimit.LimitStore` (redis when configured; keys
``switchyard:budget/<scope>/<name>/<limit>/<period>``, so a period resets by moving to the next
key, never by a timer). A call **reserves** before its first upstream call an upper bound of what
it may cost: its prompt (bounded from above as for ``max_cost_usd``) plus its completion limit
(``max_completion_tokens``/``max_tokens`` × ``n``) at the chosen model's price, every rung of a
cascade summed. A request without a completion limit gets ``max_tokens =
BUDGET_COMPLETION_TOKENS`` upstream (only when a budget or TPM limit applies to its key), so the
bound reserved is a bound kept. The reservation is one atomic ``INCRBY``;
a total over the limit is taken back at once and the call refused with a 429 naming the budget
and its reset. After the call it is **settled** to the actual cost (``ctx.cost_usd``, the tokens
the upstreams counted): the difference is refunded or charged. So the store holds the settled
spend of finished calls plus the reservations of running ones, and a call is admitted only when
its bound fits: a fleet spends past a budget only what calls cost beyond their reservations,
which is nothing unless an upstream answers past ``max_tokens`` or a failed model falls back to a
pricier one (the reservation prices the model chosen). ``bench/budget_drift.py`` measures it.

Near a limit, concurrent reservations that do not fit together are all taken back, so a call may
be refused a moment early, never admitted late. When the shared store fails the gateway fails open
as for rate limits: each replica counts in its own memory until the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.catalog import Catalog
from services.contracts.events import RoutingMode
from services.errors import BudgetExceeded, ModelNotAllowed, RateLimited
from services.providers.base import Unsupported

from .costcap import prompt_tokens_bound
from .ratelimit import LimitStore, retry_after

if TYPE_CHECKING:
    from .auth import Caller
    from .metrics import GatewayMetrics
    from .service import CallContext

log = logging.getLogger(__name__)

Scope = Literal["key", "tenant"]
LimitName = Literal["usd_per_day", "usd_per_month", "tokens_per_minute"]
ANY = "*"  # the entry of every key (tenant) without its own
KEY_ID_CHARS = 12  # a key's id: the first 12 hex characters of its SHA-256 (auth.Caller.key_id)
NAMESPACE = "budget"
GRACE_S = 3600  # a period's counter outlives the period by this much (a late settlement lands)


class Limits(BaseModel):
    """What one key or tenant may spend; an unset limit does not apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usd_per_day: float | None = Field(default=None, ge=0, description="USD per UTC day; 0: no spend.")
    usd_per_month: float | None = Field(default=None, ge=0, description="USD per UTC calendar month.")
    tokens_per_minute: int | None = Field(
        default=None, ge=0, description="Prompt + completion tokens per clock minute."
    )
    models: list[str] | None = Field(
        default=None, description="Catalog models this key (tenant) may use; unset: every model."
    )


class BudgetConfig(BaseModel):
    """Budgets and allowlists per key (by key id or SHA-256 hex, or ``*``) and per tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: dict[str, Limits] = Field(default_factory=dict)
    tenants: dict[str, Limits] = Field(default_factory=dict)

    @field_validator("keys")
    @classmethod
    def _key_ids(cls, v: dict[str, Limits]) -> dict[str, Limits]:
        out: dict[str, Limits] = {}
        for name, limits in v.items():
            h = name.strip().lower()
            if h != ANY and (not KEY_ID_CHARS <= len(h) <= 64 or any(c not in "0123456789abcdef" for c in h)):
                raise ValueError(
                    f"keys are named by the key's id (the first {KEY_ID_CHARS} hex characters of its "
                    f"SHA-256) or its whole SHA-256 hex, or '*'; got {name[:16]!r}"
                )
            kid = h if h == ANY else h[:KEY_ID_CHARS]
            if kid in out:
                raise ValueError(f"key {kid} is configured twice")
            out[kid] = limits
        return out

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, v: dict[str, Limits]) -> dict[str, Limits]:
        for name in v:
            if not name.strip() or len(name) > 128:
                raise ValueError("a tenant name is 1-128 characters")
        return v

    @property
    def empty(self) -> bool:
        return not self.keys and not self.tenants

    def unknown_models(self, known: Iterable[str]) -> list[str]:
        """``"keys.<id>.models: 'x'"`` for every allowlisted model not in ``known``."""
        known = set(known)
        out = []
        for section, entries in (("keys", self.keys), ("tenants", self.tenants)):
            for name, limits in entries.items():
                out += [f"{section}.{name}.models: {m!r}" for m in limits.models or () if m not in known]
        return out


def load_budget_file(path: Path) -> BudgetConfig:
    """A :class:`BudgetConfig` from a YAML (or JSON) file; :class:`ValueError` naming the file and
    the field at fault."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    try:
        return BudgetConfig.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'top level'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ValueError(f"{path}: {problems}") from None


def check_models(config: BudgetConfig, catalog: Catalog) -> BudgetConfig:
    """``config``, or :class:`ValueError` naming each allowlisted model the catalog does not list."""
    unknown = config.unknown_models(catalog.model_ids)
    if unknown:
        raise ValueError(
            "SWITCHYARD_GATEWAY_BUDGETS names models the catalog does not list: "
            + "; ".join(unknown)
            + f" (catalog models: {', '.join(catalog.model_ids)})"
        )
    return config


# -- periods -------------------------------------------------------------------------------------


def period(limit: LimitName, now: float) -> tuple[str, float]:
    """The calendar period of ``limit`` holding ``now`` (epoch seconds): its id and when it ends
    (UTC midnight, the first of the next month, the next whole minute)."""
    if limit == "tokens_per_minute":
        minute = int(now // 60)
        return str(minute), (minute + 1) * 60.0
    t = datetime.fromtimestamp(now, UTC)
    if limit == "usd_per_day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp()
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)  # the first of the next month
    return start.strftime("%Y-%m"), end.timestamp()


def micro_usd(usd: float) -> int:
    """Whole micro-dollars, rounded up (the counters' unit)."""
    return max(0, math.ceil(round(usd * 1e6, 6)))


@dataclass(frozen=True)
class Counter:
    """One limit of one key or tenant in one period: what a call reserves in."""

    scope: Scope
    name: str  # the key id or the tenant
    limit: LimitName
    amount: int  # the limit in the counter's unit: micro-USD or tokens
    period: str
    resets_at: float

    @property
    def key(self) -> str:
        return f"{NAMESPACE}/{self.scope}/{self.name}/{self.limit}/{self.period}"

    @property
    def usd(self) -> bool:
        return self.limit != "tokens_per_minute"

    def expiry_s(self, now: float) -> int:
        return max(1, math.ceil(self.resets_at - now)) + GRACE_S

    def who(self) -> str:
        return f"API key {self.name}" if self.scope == "key" else f"tenant {self.name!r}"


@dataclass
class Hold:
    """What a running call reserved (units per counter), settled when it ends."""

    reserved: list[tuple[Counter, int]]


@dataclass
class Estimate:
    """The upper bound a call reserves."""

    usd: float
    tokens: int


class Budgets:
    """The budgets and allowlists of every key and tenant, enforced in the :class:`LimitStore`."""

    def __init__(
        self,
        config: BudgetConfig | None,
        catalog: Catalog,
        store: LimitStore | None = None,
        *,
        completion_tokens: int = 1024,
        max_models: int = 4,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = check_models(config or BudgetConfig(), catalog)
        self.catalog = catalog
        self.store = store or LimitStore()
        self.completion_tokens = completion_tokens
        self.max_models = max_models
        self.metrics = metrics
        self.clock = clock
        self._holds: dict[str, Hold] = {}
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> bool:
        return not self.config.empty

    def scopes(self, caller: Caller) -> list[tuple[Scope, str, Limits]]:
        """The limits that apply to ``caller``: its key's (its own entry, else ``*``) and its
        tenant's when the key has a configured tenant."""
        out: list[tuple[Scope, str, Limits]] = []
        keys, tenants = self.config.keys, self.config.tenants
        key = keys.get(caller.key_id) or keys.get(ANY)
        if key is not None:
            out.append(("key", caller.key_id, key))
        if caller.tenant_name is not None:
            tenant = tenants.get(caller.tenant_name) or tenants.get(ANY)
            if tenant is not None:
                out.append(("tenant", caller.tenant_name, tenant))
        return out

    # -- allowlists -------------------------------------------------------------------------------

    def allowed(self, caller: Caller, models: Iterable[str]) -> set[str]:
        """The ones of ``models`` ``caller`` may use (every allowlist that applies holds them)."""
        out = set(models)
        for _, _, limits in self.scopes(caller):
            if limits.models is not None:
                out &= set(limits.models)
        return out

    def _denier(self, caller: Caller, model: str) -> tuple[Scope, str] | None:
        for scope, name, limits in self.scopes(caller):
            if limits.models is not None and model not in limits.models:
                return scope, name
        return None

    def check_model(self, caller: Caller, model: str) -> None:
        """:class:`ModelNotAllowed` (403) when ``caller`` may not use the catalog model ``model``."""
        denier = self._denier(caller, model)
        if denier is None:
            return
        scope, name = denier
        self._rejected(scope, "models")
        who = f"API key {name}" if scope == "key" else f"tenant {name!r}"
        allowed = sorted(self.allowed(caller, self.catalog.model_ids))
        raise ModelNotAllowed(
            f"the model {model!r} is not in the model allowlist of {who}; it may use "
            f"{', '.join(allowed) if allowed else 'no model'}"
            + (f" (or {self.catalog.routing_model!r}, which routes among them)" if allowed else ""),
            param="model",
        )

    def restrict(self, ctx: CallContext) -> None:
        """Before routing: a concrete model the key may not use is a 403, and so is a routing
        model when no candidate of the task is left; the models it may not use join
        ``ctx.incapable``, so the router excludes them and fallbacks and cascade rungs skip them."""
        if not self.active or not self.scopes(ctx.caller):
            return
        models = self.catalog.model_ids
        allowed = self.allowed(ctx.caller, models)
        if len(allowed) == len(models):
            return
        pool = self.catalog.task_defaults(ctx.task).candidates or models
        if ctx.mode is RoutingMode.PASSTHROUGH:
            self.check_model(ctx.caller, ctx.request.model)
        elif not allowed.intersection(pool):
            denier = self._denier(ctx.caller, pool[0])
            assert denier is not None
            self._rejected(denier[0], "models")
            raise ModelNotAllowed(
                f"none of the candidate models of task {ctx.task!r} ({', '.join(pool)}) is in this API "
                f"key's model allowlist ({', '.join(sorted(allowed)) or 'empty'})",
                param="model",
            )
        for m in models:
            if m not in allowed:
                ctx.incapable.setdefault(m, Unsupported("model", "not in this API key's model allowlist"))

    # -- budgets ----------------------------------------------------------------------------------

    def counters(self, caller: Caller, now: float | None = None) -> list[Counter]:
        """The counters of every limit on ``caller`` in the periods holding ``now``."""
        now = self.clock() if now is None else now
        out = []
        for scope, name, limits in self.scopes(caller):
            for limit in ("usd_per_day", "usd_per_month", "tokens_per_minute"):
                value = getattr(limits, limit)
                if value is None:
                    continue
                amount = micro_usd(value) if limit != "tokens_per_minute" else int(value)
                pid, ends = period(limit, now)  # type: ignore[arg-type]
                out.append(Counter(scope, name, limit, amount, pid, ends))  # type: ignore[arg-type]
        return out

    def estimate(self, ctx: CallContext) -> Estimate:
        """The most ``ctx`` may cost once routed: its prompt (bounded from above) and completion
        limit at each model it may be answered by (the chosen one; every rung of a cascade)."""
        req = ctx.request
        prompt = prompt_tokens_bound(req)
        asked = req.max_completion_tokens or req.max_tokens
        models = self._models_of(ctx)
        usd, tokens = 0.0, 0
        for m in models:
            entry = self.catalog.model(m)
            completion = asked or self.completion_tokens
            if asked is None and entry.context_window is not None:
                completion = max(1, min(completion, entry.context_window - prompt))
            completion *= req.n or 1
            usd += entry.price.cost(prompt, completion)
            tokens += prompt + completion
        if ctx.cap is not None:  # max_cost_usd bounds the call's whole spend
            usd = min(usd, ctx.cap.cap_usd)
        return Estimate(usd, tokens)

    def _models_of(self, ctx: CallContext) -> list[str]:
        model = ctx.model or self.catalog.default_model
        if (
            ctx.mode in (RoutingMode.CASCADE, RoutingMode.HYBRID)
            and ctx.route is not None
            and not ctx.router_fallback
        ):
            from services.router.policy import cascade_ladder

            ladder = cascade_ladder(
                self.catalog,
                ctx.route.ranking,
                model,
                cheapest_first=ctx.mode is RoutingMode.CASCADE,
                limit=self.max_models,
            )
            rungs = [m for m in ladder if m not in ctx.incapable]
            return rungs or [model]
        return [model]

    async def reserve(self, ctx: CallContext) -> None:
        """After routing, before any upstream call: reserve the call's bound in every counter that
        applies, or raise (429) naming the limit it does not fit and when that resets."""
        if not self.active:
            return
        now = self.clock()
        counters = self.counters(ctx.caller, now)
        if not counters:
            return
        est = self.estimate(ctx)
        wants = [(c, micro_usd(est.usd) if c.usd else est.tokens) for c in counters]
        for c, want in wants:
            if want > c.amount:  # larger than the whole limit: it never fits, however long one waits
                raise self._refusal(c, want, 0, now, never=True)
        totals = await asyncio.gather(*(self.store.incr(c.key, want, c.expiry_s(now)) for c, want in wants))
        over = [(c, want, total) for (c, want), total in zip(wants, totals, strict=True) if total > c.amount]
        if over:
            await asyncio.gather(
                *(self.store.incr(c.key, -want, c.expiry_s(now)) for c, want in wants if want)
            )
            c, want, total = max(over, key=lambda o: o[0].resets_at)  # passes no sooner than this
            raise self._refusal(c, want, total - want, now)
        self._holds[ctx.request_id] = Hold(wants)
        req = ctx.request
        if ctx.payload is not None and req.max_tokens is None and req.max_completion_tokens is None:
            # the bound reserved is the bound kept: the answer may not run past it
            ctx.payload["max_tokens"] = self.completion_tokens

    def settle(self, ctx: CallContext) -> None:
        """When the call has ended (``ChatService._finish``): replace its reservation by what it
        cost, ``ctx.cost_usd`` and the tokens the upstreams counted (a task: ``_finish`` is sync)."""
        deltas = self._take(ctx.request_id, ctx.cost_usd, ctx.prompt_tokens + ctx.completion_tokens)
        if not deltas:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._apply(deltas))
        except RuntimeError:  # no running loop (a stream closed outside one): the reservation stays
            log.warning("request %s: no event loop to settle its budget reservation", ctx.request_id)
            return
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _take(self, request_id: str, usd: float, tokens: int) -> list[tuple[Counter, int]]:
        """Release ``request_id``'s reservation: what settling it at the actual ``usd`` and
        ``tokens`` adds to each counter (nothing when it holds none)."""
        hold = self._holds.pop(request_id, None)
        if hold is None:
            return []
        deltas = ((c, (micro_usd(usd) if c.usd else tokens) - want) for c, want in hold.reserved)
        return [(c, d) for c, d in deltas if d]

    async def settle_now(self, request_id: str, usd: float, tokens: int) -> None:
        """Settle ``request_id``'s reservation at once (the bench and tests; the service settles
        through :meth:`settle`)."""
        if deltas := self._take(request_id, usd, tokens):
            await self._apply(deltas)

    async def _apply(self, deltas: list[tuple[Counter, int]]) -> None:
        now = self.clock()
        await asyncio.gather(*(self.store.incr(c.key, d, c.expiry_s(now)) for c, d in deltas))

    async def drain(self) -> None:
        """Wait for the settlements still running (at shutdown)."""
        if self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)

    def _rejected(self, scope: Scope, limit: str) -> None:
        if self.metrics is not None:
            self.metrics.budget_rejections.labels(scope=scope, limit=limit).inc()

    def _refusal(self, c: Counter, want: int, used: int, now: float, never: bool = False) -> Exception:
        self._rejected(c.scope, c.limit)
        wait = retry_after(c.resets_at - now)
        resets = datetime.fromtimestamp(c.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        headers = {"x-switchyard-budget": f"{c.scope}/{c.limit}"}
        if not never:
            headers["retry-after"] = wait
        if c.usd:
            what = {"usd_per_day": "daily", "usd_per_month": "monthly"}[c.limit]
            if never:
                msg = (
                    f"this request may cost up to {_usd(want)}, more than the whole {what} budget of "
                    f"{c.who()} ({_usd(c.amount)}): lower max_tokens"
                )
            else:
                msg = (
                    f"the {what} budget of {c.who()} is spent: {_usd(used)} of {_usd(c.amount)} "
                    f"used or reserved, and this request may cost up to {_usd(want)}; it resets at "
                    f"{resets} (in {wait} s)"
                )
            return BudgetExceeded(msg, headers=headers)
        headers |= {
            "x-ratelimit-limit-tokens": str(c.amount),
            "x-ratelimit-remaining-tokens": str(max(0, c.amount - used)),
            "x-ratelimit-reset-tokens": f"{max(0.0, c.resets_at - now):.3f}s",
        }
        if never:
            msg = (
                f"request too large for the tokens-per-minute limit of {c.who()}: it needs up to {want} "
                f"tokens, the limit is {c.amount}; lower max_tokens"
            )
        else:
            msg = (
                f"tokens-per-minute limit of {c.who()} reached: {used} of {c.amount} tokens used or "
                f"reserved this minute, this request needs up to {want}; retry in {wait} s"
            )
        return RateLimited(msg, headers=headers)


def _usd(micro: int) -> str:
    """Micro-dollars as dollars, to the micro-dollar and no further: ``$0.000027``, ``$5``."""
    return "$" + f"{micro / 1e6:,.6f}".rstrip("0").rstrip(".")

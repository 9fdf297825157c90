"""Limits that hold across ingress replicas: the per-key request rate, failed authentications per
source address and the exploration budget, counted with the ``limits`` library in one store.

Where the counters live (``SWITCHYARD_GATEWAY_RATE_LIMIT_STORAGE``):

- ``memory://`` (the default): this process's memory. Each ingress replica counts alone, so a fleet
  of N replicas admits up to N times each limit; right for one replica and for tests.
- ``redis://host:port/db`` (``rediss://`` for TLS; a Valkey server speaks the same protocol): one
  store every replica shares (limits' asyncio Redis storage on redis-py's client), so a limit holds
  for the whole fleet however far the ingress autoscales.

The strategy is limits' *sliding window counter*: two counters per key (this window and the last
one, the last weighted by how much of it still overlaps the sliding window), O(1) memory and one
atomic script per request. A token bucket of ``burst`` tokens refilled at ``rate`` becomes
``rate × W`` requests per window ``W = burst / rate`` seconds (rounded up to whole seconds, the
store's unit): a full burst at once, then about ``rate`` a second as the last window's weight
decays. It is the closest of limits' strategies to the old bucket (a moving window would refill a
whole burst at once, and keeps a timestamp per request in the store).

When the shared store fails (refused, timed out, any error) the gateway **fails open** to the same
limits counted in this replica's memory: no request waits on the store for longer than
``timeout_s`` or is refused because the store is away, each failure is counted
(``switchyard_rate_limit_store_errors``), ``/readyz`` says so, and the store is tried again after
``retry_s``. While it is away each replica enforces the limits alone (a fleet of N admits up to N
times each limit); the shared counts resume when it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from services.errors import RateLimited

log = logging.getLogger(__name__)

T = TypeVar("T")
SHARED_SCHEMES = ("redis", "rediss")
KEY_PREFIX = "switchyard"


def check_store_url(url: str) -> str:
    """``url`` if it names a store the gateway can count in, else :class:`ValueError` (whose
    message never repeats a password)."""
    if url == "memory://":
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc}): {redact_url(url)}") from None
    if parts.scheme not in SHARED_SCHEMES:
        raise ValueError(
            f"unsupported rate-limit store {parts.scheme + '://' if parts.scheme else redact_url(url)!r}: "
            "use memory:// (in-process) or redis://host:port/db (rediss:// for TLS; Valkey too)"
        )
    if not parts.hostname:
        raise ValueError(f"the rate-limit store URL names no host: {redact_url(url)}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the rate-limit store's database must be a number (redis://host:6379/0): {db!r}")
    return url


def redact_url(url: str) -> str:
    """``url`` with any password (``user:password@``, ``?password=``) replaced by ``***``, for logs
    and ``/readyz``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:***@{hostport}" if at and ":" in userinfo else parts.netloc
    query = "&".join(
        f"{k}=***" if "pass" in k.lower() else (f"{k}={v}" if sep else k)
        for k, sep, v in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class Window:
    """A limit in the store's terms: ``amount`` per ``seconds`` (a sliding window counter)."""

    amount: int
    seconds: int

    @classmethod
    def bucket(cls, rate: float, burst: float) -> Window:
        """A token bucket of ``burst`` tokens refilled at ``rate`` a second, as a window of
        ``burst / rate`` seconds (rounded up to whole seconds) holding ``rate × window``."""
        seconds = max(1, math.ceil(burst / rate - 1e-9))
        return cls(max(1, round(rate * seconds)), seconds)

    def item(self, namespace: str) -> RateLimitItemPerSecond:
        return RateLimitItemPerSecond(self.amount, self.seconds, namespace=namespace)

    def wait_s(self, prev: int, prev_ttl: float, cur: int, cur_ttl: float, cost: int = 1) -> float:
        """Seconds until ``cost`` fits, from the store's view of the key: the last window's count
        and the time it still weighs (the time left in this window), this window's count and its
        expiry (the time left plus one window). The weighted count ``prev × left / W + cur`` must
        drop to ``amount - cost``: within this window when this window's count leaves room, else
        only once this window has become the last one and decayed enough."""
        w, a = float(self.seconds), self.amount
        left = cur_ttl - w if cur_ttl > w else prev_ttl
        left = min(max(left, 0.0), w)
        if cur + cost <= a:
            return 0.0 if prev == 0 else max(0.0, left - (a - cur - cost) * w / prev)
        return left + w * max(0.0, 1.0 - (a - cost) / cur)


class _Backend:
    """A storage and limits' sliding window counter over it."""

    def __init__(self, storage: MemoryStorage | RedisStorage):
        self.storage = storage
        self.limiter = SlidingWindowCounterRateLimiter(storage)


class LimitStore:
    """The counters every limit of this replica spends: the shared store, or this process's
    memory when the store is ``memory://`` or failing (fail open, see the module docstring)."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        password: str | None = None,
        timeout_s: float = 0.1,
        retry_s: float = 5.0,
        on_error: Callable[[], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        check_store_url(url)
        self.url = url
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.on_error = on_error
        self.on_state = on_state
        self.clock = clock
        self.local = _Backend(MemoryStorage())
        self.shared: _Backend | None = None
        if url != "memory://":
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            options: dict[str, Any] = {
                "socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s,
                # one immediate retry (a pooled connection the store dropped), then we fail open
                "retry": Retry(NoBackoff(), 1),
            }
            if password:
                options["password"] = password
            storage = RedisStorage(
                f"async+{url}",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix=KEY_PREFIX,
                **options,
            )
            self.shared = _Backend(storage)
        self.healthy = True
        self.errors = 0
        self.last_error: str | None = None
        self._retry_at = 0.0
        if on_state is not None:
            on_state(True)

    @property
    def is_shared(self) -> bool:
        return self.shared is not None

    async def hit(self, window: Window, namespace: str, key: str, cost: int = 1) -> bool:
        """Spend ``cost`` of ``key``'s window; ``False`` (nothing spent) when it does not fit."""
        item = window.item(namespace)
        return await self._run(lambda b: b.limiter.hit(item, key, cost=cost))

    async def test(self, window: Window, namespace: str, key: str, cost: int = 1) -> bool:
        """Whether ``cost`` would fit in ``key``'s window now (nothing spent)."""
        item = window.item(namespace)
        return await self._run(lambda b: b.limiter.test(item, key, cost=cost))

    async def wait_s(self, window: Window, namespace: str, key: str) -> float:
        """Seconds until ``key``'s window has room again (0 when it has room now)."""
        item = window.item(namespace)
        view = await self._run(lambda b: b.storage.get_sliding_window(item.key_for(key), item.get_expiry()))
        return window.wait_s(*view)

    async def incr(self, key: str, amount: int, expiry_s: int) -> int:
        """Add ``amount`` (negative: take it back) to the plain counter ``key`` and return its new
        value, atomically (limits' storage ``incr``: one script on the store); a counter that does
        not exist yet starts at 0 and expires ``expiry_s`` seconds later. The budgets' counters
        (:mod:`services.gateway.budgets`): a reservation is taken back when it does not fit, and
        settled to the actual cost after the call."""
        return await self._run(lambda b: b.storage.incr(key, expiry_s, amount=amount))

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: where limits are counted now (the URL without its password)."""
        mode = (
            "in-process" if not self.is_shared else ("shared" if self.healthy else "in-process (fail-open)")
        )
        return {
            "store": redact_url(self.url),
            "mode": mode,
            "healthy": self.healthy,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    async def _run(self, op: Callable[[_Backend], Awaitable[T]]) -> T:
        if self.shared is not None and (self.healthy or self.clock() >= self._retry_at):
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await op(self.shared)
            except Exception as exc:  # noqa: BLE001 - any store failure fails open, never the request
                self._failed(exc)
            else:
                if not self.healthy:
                    self._recovered()
                return result
        return await op(self.local)

    def _failed(self, exc: BaseException) -> None:
        cause = exc.storage_error if hasattr(exc, "storage_error") else exc
        detail = str(cause) or "no answer within the timeout"
        self.errors += 1
        self.last_error = redact_text(f"{type(cause).__name__}: {detail}", self.url)[:300]
        self._retry_at = self.clock() + self.retry_s
        if self.on_error is not None:
            self.on_error()
        if self.healthy:
            self.healthy = False
            if self.on_state is not None:
                self.on_state(False)
            log.warning(
                "rate-limit store %s failed (%s): limits are counted in this replica only until it "
                "answers again (retried every %.0f s)",
                redact_url(self.url),
                self.last_error,
                self.retry_s,
            )

    def _recovered(self) -> None:
        self.healthy = True
        if self.on_state is not None:
            self.on_state(True)
        log.warning("rate-limit store %s answers again: limits are shared by the fleet", redact_url(self.url))


def redact_text(text: str, url: str) -> str:
    """``text`` without ``url``'s password, wherever it appears."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


class RateLimiter:
    """Requests per key: a token bucket of ``burst`` at ``rate`` a second, as a sliding window
    counter in the :class:`LimitStore` (shared by the fleet when the store is)."""

    NAMESPACE = "requests"

    def __init__(self, rate: float, burst: int = 0, store: LimitStore | None = None):
        self.rate = rate
        self.burst = float(burst or max(1, int(rate * 2)))
        self.store = store or LimitStore()
        self.window = Window.bucket(rate, self.burst) if rate > 0 else Window(0, 1)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def check(self, key_id: str) -> None:
        """Spend one request of ``key_id`` or raise :class:`RateLimited` with a Retry-After."""
        if not self.enabled:
            return
        if await self.store.hit(self.window, self.NAMESPACE, key_id):
            return
        wait = await self.store.wait_s(self.window, self.NAMESPACE, key_id)
        raise RateLimited(
            f"rate limit of {self.rate:g} requests/s exceeded for this key",
            headers={
                "retry-after": retry_after(wait),
                "x-ratelimit-limit-requests": str(self.window.amount),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{wait:.3f}s",
            },
        )


def retry_after(wait_s: float) -> str:
    """A ``Retry-After`` value: whole seconds, as HTTP says (RFC 9110: delay-seconds), rounded up,
    at least 1 (the exact wait goes in OpenAI's ``x-ratelimit-reset-*`` headers)."""
    return str(max(1, math.ceil(wait_s)))


class AuthFailureLimiter:
    """Failed authentications per source address: ``per_minute`` failures a minute (a sliding
    window counter of one minute); a source that spent them gets a 429 for every request, valid
    key or not, until the window slides on. Guessing keys from one address costs a minute per
    ``per_minute`` tries, across the whole fleet when the store is shared."""

    NAMESPACE = "auth-failures"

    def __init__(self, per_minute: float, store: LimitStore | None = None):
        self.window = Window(max(1, round(per_minute)), 60)
        self.store = store or LimitStore()

    async def blocked(self, source: str) -> None:
        """Raise :class:`RateLimited` when ``source`` has no failure left to spend."""
        if await self.store.test(self.window, self.NAMESPACE, source):
            return
        wait = await self.store.wait_s(self.window, self.NAMESPACE, source)
        raise RateLimited(
            "too many failed authentications from this address",
            headers={"retry-after": retry_after(wait)},
        )

    async def failed(self, source: str) -> None:
        """Spend one failure of ``source`` (none left: nothing more to count)."""
        await self.store.hit(self.window, self.NAMESPACE, source)


class SharedBudget:
    """A spend budget per key (USD over any hour), counted in micro-USD in the :class:`LimitStore`:
    the exploration budget of a task, held by the whole fleet when the store is shared. A call's
    estimate is spent before it starts (refused when it does not fit) and any excess of its actual
    cost after; a call cheaper than its estimate is not refunded (the store's counters only grow),
    so the budget errs on the side of spending less."""

    NAMESPACE = "explore-usd"
    HOUR_S = 3600

    def __init__(self, usd_per_hour: float, store: LimitStore):
        self.window = Window(max(1, round(usd_per_hour * 1e6)), self.HOUR_S)
        self.store = store

    async def admit(self, key: str, estimate_usd: float) -> bool:
        """Spend ``estimate_usd`` of ``key``'s hour; ``False`` (nothing spent) when it does not fit."""
        return await self.store.hit(self.window, self.NAMESPACE, key, cost=_micro(estimate_usd))

    async def charge(self, key: str, extra_usd: float) -> None:
        """Spend what a call cost beyond its estimate (when the budget is full it stays full)."""
        if extra_usd > 0:
            await self.store.hit(self.window, self.NAMESPACE, key, cost=_micro(extra_usd))


def _micro(usd: float) -> int:
    return max(1, math.ceil(usd * 1e6))

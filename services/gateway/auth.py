"""API keys (hashed, constant-time compare) and per-key request rate limits (token buckets)."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.errors import RateLimited, Unauthorized


@dataclass(frozen=True)
class Caller:
    """Who is calling: a short, non-secret id of the key (or ``anonymous`` when auth is off)."""

    key_id: str


class KeyStore:
    """Accepts a bearer key whose SHA-256 matches a stored hash; never keeps the plain key."""

    def __init__(self, hashes: list[str]):
        self._hashes = [bytes.fromhex(h) for h in hashes]

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller for an ``Authorization: Bearer <key>`` header; raises :class:`Unauthorized`."""
        if not self.enabled:
            return Caller("anonymous")
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        digest = hashlib.sha256(key.strip().encode("utf-8")).digest()
        match = False
        for h in self._hashes:  # compare against every hash so timing does not tell which matched
            match |= hmac.compare_digest(digest, h)
        if not match:
            raise Unauthorized("invalid API key")
        return Caller(digest.hex()[:12])


class RateLimiter:
    """A token bucket per key: ``rate`` requests/s refilled continuously, ``burst`` at most."""

    def __init__(
        self, rate: float, burst: int = 0, clock: Callable[[], float] = time.monotonic, max_keys: int = 10000
    ):
        self.rate = rate
        self.burst = float(burst or max(1, int(rate * 2)))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max_keys = max_keys

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def peek(self, key_id: str) -> float:
        """The tokens ``key_id`` has now (without taking one)."""
        now = self._clock()
        tokens, last = self._buckets.get(key_id, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def check(self, key_id: str) -> None:
        """Take one token for ``key_id`` or raise :class:`RateLimited` with a Retry-After."""
        if not self.enabled:
            return
        now = self._clock()
        tokens, last = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            self._buckets[key_id] = (tokens, now)
            raise RateLimited(
                f"rate limit of {self.rate:g} requests/s exceeded for this key",
                headers={
                    # whole seconds, as HTTP says (RFC 9110: delay-seconds), rounded up; the exact
                    # wait in OpenAI's x-ratelimit-* headers
                    "retry-after": str(max(1, math.ceil(wait))),
                    "x-ratelimit-limit-requests": str(self.burst),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{wait:.3f}s",
                },
            )
        if len(self._buckets) >= self._max_keys and key_id not in self._buckets:
            self._buckets.pop(next(iter(self._buckets)))
        self._buckets[key_id] = (tokens - 1.0, now)


class AuthFailureLimiter:
    """Failed authentications per source address: a token bucket of ``per_minute`` failures (burst
    the same); a source that spent it gets a 429 for every request, valid key or not, until the
    bucket refills. Guessing keys from one address costs a minute per ``per_minute`` tries."""

    def __init__(
        self, per_minute: float, clock: Callable[[], float] = time.monotonic, max_sources: int = 10000
    ):
        self._bucket = RateLimiter(
            per_minute / 60.0, burst=max(1, int(per_minute)), clock=clock, max_keys=max_sources
        )

    def blocked(self, source: str) -> None:
        """Raise :class:`RateLimited` when ``source`` has no failure left to spend."""
        tokens = self._bucket.peek(source)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self._bucket.rate
            raise RateLimited(
                "too many failed authentications from this address",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )

    def failed(self, source: str) -> None:
        """Spend one failure of ``source``."""
        try:
            self._bucket.check(source)
        except RateLimited:
            pass

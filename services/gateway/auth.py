"""API keys (hashed, constant-time compare); the rate limits are in :mod:`services.gateway.ratelimit`."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from services.errors import Unauthorized


@dataclass(frozen=True)
class Caller:
    """Who is calling: a short, non-secret id of the key (or ``anonymous`` when auth is off)."""

    key_id: str
    judge: bool = False  # a key with the judge role: feedback on any call, source judge or rule
    tenant_name: str | None = None  # from the key's configuration; default the key's id

    @property
    def tenant(self) -> str:
        """The tenant of the call (events, feedback ownership): configured per key, else the key."""
        return self.tenant_name or self.key_id


class KeyStore:
    """Accepts a bearer key whose SHA-256 matches a stored hash; never keeps the plain key."""

    def __init__(
        self,
        hashes: list[str],
        judge_hashes: list[str] | None = None,
        tenants: dict[str, str] | None = None,
    ):
        self._hashes = [bytes.fromhex(h) for h in hashes]
        self._judges = [bytes.fromhex(h) for h in judge_hashes or []]
        self._tenants = {h.lower(): t for h, t in (tenants or {}).items()}  # key hash -> tenant

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
        judge = False
        for h in self._judges:
            judge |= hmac.compare_digest(digest, h)
        return Caller(digest.hex()[:12], judge=judge, tenant_name=self._tenants.get(digest.hex()))

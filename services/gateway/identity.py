"""Server-issued request ids that say, signed, when and for whom they were issued.

A request id is ``req_`` + base64url of: a format byte, the issue time (whole seconds), 11 random
bytes, a 4-byte tag of the caller's tenant and a 12-byte HMAC-SHA256 of all of that under the
gateway's secret. So ``POST /v1/feedback`` can tell, in any ingress replica and with no shared
state, that an id was issued by this gateway (forged or mistyped ids: 404), to which tenant (feedback
on another tenant's call: 404 unless the caller's key has the judge role, so ids of others are not
even confirmed to exist) and how long ago (past the streams join's TTL the call can no longer
be joined: 404 ``expired``). Replicas verify each other's ids when they share the secret
(``SWITCHYARD_GATEWAY_ID_SECRET``; locally a key file in the state dir, created once, mode 0600).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Callable
from pathlib import Path

from services.contracts.settings import local_key

PREFIX = "req_"
_FORMAT = 1
_HEAD = struct.Struct(">BQ")  # format, issue time (8 bytes: simple, the 3 spare ones cost nothing)
_RAND, _TAG, _MAC = 11, 4, 12
_SIZE = _HEAD.size + _RAND + _TAG + _MAC  # 36: a multiple of 3, so the base64 text is canonical


class IdCheck(enum.Enum):
    OK = "ok"
    UNKNOWN = "unknown"  # not issued by this gateway (or malformed)
    FOREIGN = "foreign"  # issued to another tenant
    EXPIRED = "expired"  # older than the join can match


def load_secret(configured: str | None, key_file: Path) -> bytes:
    """The signing secret: the configured one, else the local key file (created once, 0600)."""
    return configured.encode("utf-8") if configured else local_key(key_file)


class RequestIds:
    """Issues and checks request ids (see the module doc)."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time):
        self._key = hmac.new(secret, b"switchyard request id v1", hashlib.sha256).digest()
        self._clock = clock

    def _tag(self, tenant: str) -> bytes:
        return hmac.new(self._key, b"tenant\0" + tenant.encode("utf-8"), hashlib.sha256).digest()[:_TAG]

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC]

    def issue(self, tenant: str) -> str:
        body = _HEAD.pack(_FORMAT, int(self._clock())) + secrets.token_bytes(_RAND) + self._tag(tenant)
        raw = body + self._mac(body)
        return PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def check(self, request_id: str, tenant: str, *, any_tenant: bool, max_age_s: float) -> IdCheck:
        """Whether feedback from ``tenant`` (or from a judge, ``any_tenant``) may name this id."""
        if not request_id.startswith(PREFIX) or len(request_id) > 64:
            return IdCheck.UNKNOWN
        text = request_id[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (ValueError, TypeError):
            return IdCheck.UNKNOWN
        if len(raw) != _SIZE or base64.urlsafe_b64encode(raw).decode("ascii") != text:
            return IdCheck.UNKNOWN
        body, mac = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return IdCheck.UNKNOWN
        fmt, issued = _HEAD.unpack_from(body)
        if fmt != _FORMAT:
            return IdCheck.UNKNOWN
        if not any_tenant and not hmac.compare_digest(body[-_TAG:], self._tag(tenant)):
            return IdCheck.FOREIGN
        if self._clock() - issued > max_age_s:
            return IdCheck.EXPIRED
        return IdCheck.OK

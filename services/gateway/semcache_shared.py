"""The semantic cache shared by every ingress replica, through Redis/Valkey (the rate limits' store).

Debian's redis-server has no vector search, so the store keeps what is shared and each replica
searches its own faiss index (:mod:`services.gateway.semcache`):

* ``<prefix>:e:<request_id>``: an admitted entry (namespace, task, text, answer, expiry, vector as
  float32 bytes), expiring with the entry's TTL, so a replica that starts (or restarts) loads the
  live entries (:meth:`SharedCacheStore.bootstrap`).
* ``<prefix>:rej:<request_id>``: a rejected request id (kept ``rejected_ttl_s``): no replica admits
  it later, whichever saw the answer.
* ``<prefix>:log``: a Redis Stream of operations (``admit``, ``reject``, ``confirm``), trimmed to
  about ``stream_maxlen``; every replica tails it into its local cache. A ``confirm`` is published
  when the replica that got the positive feedback does not hold the answer pending (the feedback
  reached another replica than the request).

Nothing here is on the request path: the cache's admission/rejection callbacks only queue an
operation; :meth:`SharedCacheStore.run` (one task per replica) writes the queue and tails the
stream. When the store is away the replica keeps serving from its own cache and retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections import deque
from typing import Any

import numpy as np

from .semcache import SemanticCache

log = logging.getLogger(__name__)


class SharedCacheStore:
    """One replica's link to the shared store. Build it with the replica's :class:`SemanticCache`;
    it installs the cache's ``on_admit``/``on_reject`` callbacks."""

    def __init__(
        self,
        cache: SemanticCache,
        client: Any,
        *,
        prefix: str = "switchyard:semcache",
        replica_id: str | None = None,
        stream_maxlen: int = 100_000,
        rejected_ttl_s: float = 7 * 86_400,
        block_ms: int = 1_000,
    ) -> None:
        """``client``: a ``redis.asyncio.Redis`` (``decode_responses=False``)."""
        self.cache = cache
        self.redis = client
        self.prefix = prefix
        self.replica_id = replica_id or f"{os.getpid()}-{os.urandom(4).hex()}"
        self.stream = f"{prefix}:log"
        self.stream_maxlen = stream_maxlen
        self.rejected_ttl_s = rejected_ttl_s
        self.block_ms = block_ms
        self.last_id = b"$"
        self._outbox: deque[tuple[str, Any]] = deque(maxlen=100_000)
        self.errors = 0
        cache.on_admit = lambda item: self._outbox.append(("admit", item))
        cache.on_reject = lambda rid: self._outbox.append(("reject", rid))

    @classmethod
    def from_url(
        cls, cache: SemanticCache, url: str, *, password: str | None = None, **kw: Any
    ) -> SharedCacheStore:
        """A store on ``redis://host:port/db`` (``rediss://`` for TLS; Valkey too)."""
        from redis.asyncio import Redis

        return cls(cache, Redis.from_url(url, password=password, socket_timeout=5), **kw)

    # -- feedback that may arrive at another replica than the request

    def confirm(self, request_id: str) -> bool:
        """Confirm here; when this replica does not hold the answer pending, ask the others."""
        if self.cache.confirm(request_id):
            return True
        self._outbox.append(("confirm", request_id))
        return False

    def reject(self, request_id: str) -> bool:
        """Reject here and everywhere (the cache's callback publishes it)."""
        return self.cache.reject(request_id)

    # -- the store

    def _ekey(self, rid: str) -> str:
        return f"{self.prefix}:e:{rid}"

    def _rkey(self, rid: str) -> str:
        return f"{self.prefix}:rej:{rid}"

    @staticmethod
    def _encode(item: dict) -> bytes:
        vec = item.get("vector")
        body = {**item, "vector": None}
        if vec is not None:
            body["vector"] = base64.b64encode(np.asarray(vec, dtype=np.float32).tobytes()).decode()
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def _decode(raw: bytes) -> dict:
        item = json.loads(raw)
        if item.get("vector"):
            item["vector"] = np.frombuffer(base64.b64decode(item["vector"]), dtype=np.float32)
        return item

    async def flush(self) -> int:
        """Write the queued operations to the store; returns how many."""
        n = 0
        while self._outbox:
            op, arg = self._outbox[0]
            if op == "admit":
                rid = arg["request_id"]
                ttl_ms = int((arg["expires_at"] - self.cache.clock()) * 1000)
                if ttl_ms > 0 and not await self.redis.exists(self._rkey(rid)):
                    async with self.redis.pipeline(transaction=True) as p:
                        p.set(self._ekey(rid), self._encode(arg), px=ttl_ms)
                        p.xadd(
                            self.stream,
                            {"op": "admit", "rid": rid, "from": self.replica_id},
                            maxlen=self.stream_maxlen,
                            approximate=True,
                        )
                        await p.execute()
                elif ttl_ms > 0:  # rejected elsewhere meanwhile
                    self.cache.reject(rid, _replicate=False)
            elif op == "reject":
                async with self.redis.pipeline(transaction=True) as p:
                    p.set(self._rkey(arg), b"1", ex=int(self.rejected_ttl_s))
                    p.delete(self._ekey(arg))
                    p.xadd(
                        self.stream,
                        {"op": "reject", "rid": arg, "from": self.replica_id},
                        maxlen=self.stream_maxlen,
                        approximate=True,
                    )
                    await p.execute()
            else:
                await self.redis.xadd(
                    self.stream,
                    {"op": op, "rid": arg, "from": self.replica_id},
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )
            self._outbox.popleft()
            n += 1
        return n

    async def bootstrap(self) -> int:
        """Load the live shared entries into the local cache (at start); tail from here on."""
        last = await self.redis.xrevrange(self.stream, count=1)
        self.last_id = last[0][0] if last else b"0-0"
        n = 0
        async for key in self.redis.scan_iter(match=f"{self.prefix}:e:*", count=500):
            raw = await self.redis.get(key)
            if raw is not None and self.cache.admit_remote(self._decode(raw)):
                n += 1
        log.info("semantic cache: %d shared entries loaded", n)
        return n

    async def pull(self, block_ms: int | None = None) -> int:
        """Apply the stream's operations since the last one seen; returns how many were applied."""
        resp = await self.redis.xread({self.stream: self.last_id}, count=500, block=block_ms)
        applied = 0
        for _, records in resp or []:
            for rec_id, fields in records:
                self.last_id = rec_id
                if fields.get(b"from", b"").decode() == self.replica_id:
                    continue
                op, rid = fields[b"op"].decode(), fields[b"rid"].decode()
                if op == "admit":
                    raw = await self.redis.get(self._ekey(rid))
                    if raw is not None and self.cache.admit_remote(self._decode(raw)):
                        applied += 1
                elif op == "reject":
                    self.cache.reject(rid, _replicate=False)
                    applied += 1
                elif op == "confirm" and self.cache.confirm(rid):
                    applied += 1
        return applied

    async def sync(self) -> int:
        """Flush, then pull without waiting (tests and shutdown)."""
        n = await self.flush()
        return n + await self.pull()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """The replica's replication loop: bootstrap, then flush and tail until ``stop``."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                if self.last_id == b"$":
                    await self.bootstrap()
                await self.flush()
                await self.pull(self.block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store being away must not stop the replica
                self.errors += 1
                log.warning("semantic cache store: %s; retrying", type(exc).__name__)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
        await self.redis.aclose()

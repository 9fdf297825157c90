"""The call <-> feedback join by ``request_id``: pure logic over any mutable mapping.

The Faust agent passes a changelog-backed table as the store; unit tests pass a dict. An entry
is one of: a pending call (waiting for feedback), pending feedback (it arrived before its call),
or a "joined" tombstone that makes redelivered calls and duplicate feedback no-ops until it
expires. Entries older than the TTL are swept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from services.contracts import CallEvent, CallStatus, FeedbackEvent, OutcomeEvent

log = logging.getLogger(__name__)

_OK = CallStatus.OK.value
_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators=) builds one per call


def json_bytes(obj: Any) -> bytes:
    """Compact JSON of ``obj`` as bytes (the worker's changelog and internal records)."""
    return _JSON.encode(obj).encode()


# Fields of a call the outcome needs; the rest (attempts, usage, ...) is not kept in the table.
_CALL_FIELDS = frozenset(
    (
        "request_id",
        "ts",
        "task",
        "tenant",
        "prompt_hash",
        "prompt",
        "chosen_model",
        "mode",
        "router_version",
        "scores",
        "escalated",
        "cost_usd",
        "latency_ms",
        "shadow_of",
        "status",
    )
)


def entry_plain(entry: dict[str, Any]) -> dict[str, Any]:
    """A join entry as plain JSON-able data (a pending call is kept as its validated event in
    memory; after a restart it comes back from the changelog as this dict)."""
    call = entry.get("call")
    if isinstance(call, CallEvent):
        return {**entry, "call": call.model_dump(mode="json", include=_CALL_FIELDS)}
    return entry


def entry_json(entry: dict[str, Any]) -> bytes:
    """The changelog value of a join entry: ``json(entry_plain(entry))``, with the call's part
    serialised by pydantic directly (no intermediate dict)."""
    call = entry.get("call")
    if not isinstance(call, CallEvent):
        return json_bytes(entry)
    rest = _JSON.encode({k: v for k, v in entry.items() if k != "call"})[1:]  # '"ts":...}' or '}'
    sep = b"," if rest != "}" else b""
    return b'{"call":' + call.model_dump_json(include=_CALL_FIELDS).encode() + sep + rest.encode()


def _fields(call: CallEvent | dict[str, Any]) -> Callable[..., Any]:
    """``get(name, default=None)`` over a call event or its plain dict."""
    if isinstance(call, dict):
        return call.get
    return lambda name, default=None: getattr(call, name, default)


@dataclass
class JoinStats:
    """Counters of what the join did (exported as Prometheus metrics by the worker)."""

    outcomes: int = 0
    pending_calls: int = 0
    early_feedback: int = 0
    duplicates: int = 0
    unjoinable: int = 0
    expired: int = 0


class CallFeedbackJoin:
    """Join calls with their feedback; emit one :class:`OutcomeEvent` per request.

    ``tiers`` maps a model id to its catalog tier; ``accept_threshold`` turns a feedback value
    into accepted/rejected. The first feedback of a request wins; later ones are duplicates.
    """

    def __init__(
        self,
        store: MutableMapping[str, Any],
        ttl_s: float,
        tiers: dict[str, str] | None = None,
        accept_threshold: float = 0.5,
        on_delete: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.tiers = tiers or {}
        self.accept_threshold = accept_threshold
        self._on_delete = on_delete
        self.stats = JoinStats()

    def on_call(self, call: CallEvent, now: float, partition: int | None = None) -> OutcomeEvent | None:
        """Record a call; return its outcome when its feedback was already waiting."""
        entry = self.store.get(call.request_id)
        if entry is not None and ("done" in entry or "call" in entry):
            self.stats.duplicates += 1
            return None
        if entry is not None and "fb" in entry:
            outcome = self._outcome(call, FeedbackEvent.model_validate(entry["fb"]))  # stored as its dump
            self._finish(call.request_id, now, partition, entry["fb"].get("feedback_id"), outcome is not None)
            return outcome
        # The validated event itself (its changelog record holds the _CALL_FIELDS: entry_json).
        self.store[call.request_id] = {"call": call, "ts": now, "p": partition}
        self.stats.pending_calls += 1
        return None

    def on_feedback(self, fb: FeedbackEvent, now: float, partition: int | None = None) -> OutcomeEvent | None:
        """Record feedback; return the outcome when its call is known. Duplicates return None."""
        entry = self.store.get(fb.request_id)
        if entry is None:
            self.store[fb.request_id] = {"fb": fb.model_dump(mode="json"), "ts": now, "p": partition}
            self.stats.early_feedback += 1
            return None
        if "done" in entry or "fb" in entry:
            self.stats.duplicates += 1
            return None
        outcome = self._outcome(entry["call"], fb)
        self._finish(fb.request_id, now, partition, fb.feedback_id, outcome is not None)
        return outcome

    def _finish(
        self, request_id: str, now: float, partition: int | None, feedback_id: str | None, joined: bool
    ) -> None:
        self.store[request_id] = {"done": True, "ts": now, "p": partition, "fid": feedback_id}
        if joined:
            self.stats.outcomes += 1
        else:
            self.stats.unjoinable += 1

    def _outcome(self, call: CallEvent | dict[str, Any], fb: FeedbackEvent) -> OutcomeEvent | None:
        """The outcome of a call and its feedback. The call is its validated event (the usual
        case) or the plain dict a changelog gave back after a restart."""
        value, source = fb.value, fb.source
        c = _fields(call)
        chosen = c("chosen_model")
        if not chosen or c("status") != _OK:
            log.debug("request %s: no answered model, no outcome", c("request_id"))
            return None
        return OutcomeEvent(
            request_id=c("request_id"),
            ts=c("ts"),
            task=c("task"),
            tenant=c("tenant", "default"),
            prompt_hash=c("prompt_hash"),
            prompt=c("prompt"),
            chosen_model=chosen,
            tier=self.tiers.get(chosen),
            mode=c("mode"),
            router_version=c("router_version"),
            predicted=(c("scores") or {}).get(chosen),
            score=value,
            accepted=value >= self.accept_threshold,
            escalated=bool(c("escalated")),
            cost_usd=c("cost_usd", 0.0),
            latency_ms=c("latency_ms", 0.0),
            feedback_source=source,
            shadow_of=c("shadow_of"),
            cache_hit=bool(c("cache_hit", False)),
            cache_similarity=c("cache_similarity"),
        )

    def sweep(self, now: float, keys: Iterable[str] | None = None) -> int:
        """Drop entries older than the TTL; return how many were dropped."""
        cutoff = now - self.ttl_s
        expired = [
            k
            for k in (list(keys) if keys is not None else list(self.store.keys()))
            if (e := self.store.get(k)) is not None and e.get("ts", now) < cutoff
        ]
        for key in expired:
            entry = self.store[key]
            if self._on_delete is not None:
                self._on_delete(key, entry)
            else:
                del self.store[key]
            if "call" in entry:
                self.stats.expired += 1
        return len(expired)

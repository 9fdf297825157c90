"""A quality-aware semantic cache of chat answers, in process (bounded, LRU), for the gateway.

Why it is shaped this way (docs/cache.md has the measurements):

* **Only good answers are served.** A strong-tier answer is stored at once (``offer(good=True)``);
  any other answer waits in a bounded *pending* area until a positive feedback or judge signal
  confirms it (``confirm``). Negative feedback (``reject``) drops the answer from pending and from
  the cache and remembers the request id, so a late confirmation never admits it.
* **Namespaces keep answers apart that must never meet**: :func:`cache_namespace` hashes the
  tenant, the requested model, the conversation before the last user message and every parameter
  that changes the answer. Only the last user message is matched, and only within its namespace
  and task.
* **Lookup**: the normalised text's hash first (an exact repeat always counts, whatever the
  threshold), then the nearest live neighbours of the router's query embedding (no second encoder
  pass) with cosine >= the task's threshold, then a **guard**: a structural fingerprint (the
  numbers in order, negation and polarity cues, the answer options) must match, so "change the
  numbers", "negate the question" and "reorder the options" — the known false hits of semantic
  caches — are refused even where the embeddings are nearly identical.
* **Index**: faiss, one index per (namespace, task) bucket: exact inner product (``IndexFlatIP``)
  while a bucket is small, HNSW (``IndexHNSWFlat``) from ``hnsw_min_entries`` on (exact search
  stays under 0.3 ms p99 at 10k entries with one OpenMP thread, so the default capacity never
  needs HNSW). Deletions (eviction, TTL, reject) are tombstones; a flat bucket is rebuilt from its
  live vectors when a quarter of it is dead (an HNSW one when half is).

One asyncio loop calls it; a lock makes it safe from threads too (a lookup holds it ~0.1 ms).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import re
import threading
import time
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger(__name__)

DEFAULT_TASK = "_default"
# request fields that do not change the answer: never part of the namespace
NAMESPACE_IGNORED = frozenset(
    {
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "prediction",
        "safety_identifier",
        "prompt_cache_key",
    }
)
SEARCH_K = 16  # neighbours examined per lookup (tombstones and guard refusals skip to the next)


class TaskCachePolicy(BaseModel):
    """A task's override of the defaults; ``None`` keeps the default."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(default=None, ge=0, le=1, description="Cosine similarity for a hit.")
    ttl_s: float | None = Field(default=None, gt=0, description="How long a stored answer is served.")
    enabled: bool = Field(default=True, description="False: this task is neither looked up nor stored.")


# Chosen from the threshold curve of bench/cache_bench.py (docs/cache.md, "Threshold curve"), per task
# group: among the thresholds whose false-hit rate stays <= 1 % on paraphrase traffic with traps,
# the highest that keeps the hit rate within half a point of the best. WinoGrande's twin sentences
# ("... because the _ is smaller" / "bigger") sit at cosine > 0.99 with opposite answers and no cue
# the guard knows: exact repeats only there. A task not listed gets DEFAULT_THRESHOLD, the most
# cautious semantic threshold picked. 1.0 means exact repeats only.
DEFAULT_THRESHOLD = 0.995
MMLU_SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_sexuality",
    "international_law",
    "logical_fallacies",
    "machine_learning",
    "management",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "world_religions",
)
DEFAULT_TASK_POLICIES: dict[str, TaskCachePolicy] = {
    **{subject: TaskCachePolicy(threshold=0.97) for subject in MMLU_SUBJECTS},
    "gsm8k": TaskCachePolicy(threshold=0.97),
    "arc-challenge": TaskCachePolicy(threshold=0.98),
    "mbpp": TaskCachePolicy(threshold=0.995),
    "winogrande": TaskCachePolicy(threshold=1.0),
}


class CacheConfig(BaseModel):
    """The semantic cache's settings (the gateway's ``cache`` settings; runtime-changeable parts
    through :meth:`SemanticCache.set_policy`)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("threshold", mode="before")
    @classmethod
    def _measured_default(cls, v: Any) -> Any:
        return DEFAULT_THRESHOLD if v is None else v

    enabled: bool = Field(default=True, description="Serve and store answers from the semantic cache.")
    capacity: int = Field(default=10_000, ge=1, description="Entries per replica (LRU bound).")
    threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        ge=0,
        le=1,
        description="Default cosine similarity for a hit (None: the measured default).",
    )
    ttl_s: float = Field(default=86_400.0, gt=0, description="Default time a stored answer is served.")
    tasks: dict[str, TaskCachePolicy] = Field(
        default_factory=dict,
        description="Per-task overrides of threshold, TTL and enabled (over the measured per-task "
        "defaults, DEFAULT_TASK_POLICIES, which apply unless use_measured_defaults is off).",
    )
    use_measured_defaults: bool = Field(
        default=True, description="Apply the per-task thresholds measured by bench/cache_bench.py."
    )
    pending_capacity: int = Field(
        default=10_000, ge=0, description="Answers awaiting a positive signal (oldest dropped first)."
    )
    pending_ttl_s: float = Field(
        default=3_600.0, gt=0, description="How long an answer waits for a positive signal."
    )
    rejected_capacity: int = Field(
        default=100_000, ge=0, description="Rejected request ids remembered (never admitted later)."
    )
    guard: bool = Field(
        default=True, description="Refuse semantic hits whose numbers, negations or options differ."
    )
    hnsw_min_entries: int = Field(
        default=20_000, ge=1, description="A bucket switches from exact search to HNSW at this size."
    )
    search_threads: int = Field(
        default=1,
        ge=1,
        description="faiss OpenMP threads (process-wide). 1: a single-query search "
        "gains nothing from more and suffers their contention (p99 0.3 ms vs 28 ms at 10k, 2 cores).",
    )


@dataclass(frozen=True)
class CacheHit:
    """A served answer: the stored OpenAI chat completion body and where it came from."""

    answer: dict
    similarity: float
    source_request_id: str
    exact: bool
    task: str | None


# ---------------------------------------------------------------- namespaces and text


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def cache_namespace(tenant: str | None, model: str, payload: dict) -> str:
    """A hash of everything that changes the answer except the last user message: the tenant
    (answers are never shared across tenants), the requested model, the earlier messages (system
    prompt included) and every output-affecting parameter (temperature, max_tokens, tools,
    response_format, n, seed, stop, ...). Transport and bookkeeping fields (stream,
    stream_options, user, metadata) are left out."""
    messages = list(payload.get("messages") or [])
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), default=None
    )
    context = messages[:last_user] if last_user is not None else messages
    trailing = messages[last_user + 1 :] if last_user is not None else []
    params = {k: v for k, v in payload.items() if k not in NAMESPACE_IGNORED and k != "model"}
    raw = _canonical({"t": tenant or "", "m": model, "c": context, "a": trailing, "p": params})
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """What an exact hit compares: NFKC, case-folded, whitespace collapsed, trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_key(text: str) -> str:
    """The exact-match key of a text (hash of :func:`normalise_text`)."""
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------- the guard

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand "
    "million billion half twice double triple dozen quarter third"
).split()
_NUMBER = re.compile(r"(?<![a-z])[-+]?\$?\d[\d,]*(?:\.\d+)?%?|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# negations and the polarity words a "negate the question" edit flips (most -> least, true -> false)
CUES = frozenset(
    "not no never none nothing nobody nowhere neither nor cannot without false untrue incorrect wrong "
    "except unless least fewest lowest smallest minimum worst less fewer most greatest highest largest "
    "maximum best more always all every true correct".split()
)
_OPTION = re.compile(r"^\s*\(?([A-J])[.):]\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Fingerprint:
    """The structure a semantic hit must share with the stored query."""

    numbers: tuple[str, ...]
    cues: tuple[tuple[str, int], ...]
    options: tuple[tuple[str, str], ...]


def fingerprint(text: str) -> Fingerprint:
    """Numbers (in order, ``1,000`` = ``1000``), negation/polarity cue counts and the
    ``A. ...``/``A) ...`` answer options of a text. Cheap: three regex passes."""
    norm = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    numbers = tuple(n.replace(",", "").replace("$", "").lstrip("+") for n in _NUMBER.findall(norm))
    words = _WORD.findall(norm)
    # "doesn't" counts as "not" (so "does not" is the same question); "not's" still counts
    cues = Counter("not" if w.endswith("n't") else w.split("'")[0] for w in words)
    cues = Counter({w: c for w, c in cues.items() if w in CUES})
    options = tuple(
        (m.group(1).upper(), normalise_text(m.group(2)))
        for m in _OPTION.finditer(unicodedata.normalize("NFKC", text))
    )
    return Fingerprint(numbers, tuple(sorted(cues.items())), options)


def guard_refusal(stored: Fingerprint, query: Fingerprint) -> str | None:
    """Why a semantic hit must not be served (``numbers``, ``negation``, ``options``), or None."""
    if stored.numbers != query.numbers:
        return "numbers"
    if stored.cues != query.cues:
        return "negation"
    if stored.options != query.options:
        return "options"
    return None


# ---------------------------------------------------------------- storage


@dataclass(eq=False)
class _Entry:
    eid: int
    request_id: str
    ns: str
    task: str
    key: str
    vector: np.ndarray | None
    answer: dict
    fp: Fingerprint
    expires_at: float
    bucket: tuple[str, str]
    hits: int = 0


@dataclass(eq=False)
class _Pending:
    request_id: str
    ns: str
    task: str
    text: str
    vector: np.ndarray | None
    answer: dict
    expires_at: float


@dataclass(eq=False)
class _Bucket:
    """The vectors of one (namespace, task): a faiss index over entry ids, with tombstones."""

    dim: int
    hnsw_min: int
    index: Any = None
    live: dict[int, np.ndarray] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    hnsw: bool = False

    def _new_index(self, size: int) -> Any:
        self.hnsw = size >= self.hnsw_min
        if self.hnsw:
            inner = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = 64
            inner.hnsw.efSearch = 64
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap(inner)

    def add(self, eid: int, vec: np.ndarray) -> None:
        self.live[eid] = vec
        if self.index is None or (not self.hnsw and len(self.live) >= self.hnsw_min):
            self.rebuild()
            return
        self.index.add_with_ids(vec[None, :], np.array([eid], dtype=np.int64))

    def remove(self, eid: int) -> None:
        if self.live.pop(eid, None) is not None:
            self.dead.add(eid)
            # flat: rebuilding 10k vectors takes ~10 ms; HNSW: seconds, so it waits longer
            if len(self.dead) > max(64, len(self.live) if self.hnsw else len(self.live) // 4):
                self.rebuild()

    def rebuild(self) -> None:
        self.index = self._new_index(len(self.live))
        self.dead.clear()
        if self.live:
            ids = np.fromiter(self.live, dtype=np.int64, count=len(self.live))
            self.index.add_with_ids(np.stack(list(self.live.values())), ids)

    def search(self, vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        if self.index is None or self.index.ntotal == 0:
            return []
        k = min(k + len(self.dead), self.index.ntotal)
        sims, ids = self.index.search(vec[None, :], k)
        return [(int(i), float(s)) for i, s in zip(ids[0], sims[0], strict=True) if i >= 0 and i in self.live]


def _unit(vector: Any, dim: int | None) -> np.ndarray | None:
    if vector is None:
        return None
    v = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(-1))
    if dim is not None and v.shape[0] != dim:  # another embedding space (router swap): exact only
        log.warning("semantic cache: a %d-d vector for a %d-d index; exact match only", v.shape[0], dim)
        return None
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0:
        return None
    return v if abs(n - 1.0) < 1e-4 else v / n


# ---------------------------------------------------------------- the cache


class SemanticCache:
    """The per-replica cache. ``on_admit(entry_dict)`` / ``on_reject(request_id)`` are called
    after a local admission / rejection (the shared store replicates them); ``clock`` is wall time
    so expiries mean the same on every replica."""

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_admit: Callable[[dict], None] | None = None,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config or CacheConfig()
        self.clock = clock
        self.on_admit = on_admit
        self.on_reject = on_reject
        self._lock = threading.RLock()
        measured = DEFAULT_TASK_POLICIES if self.config.use_measured_defaults else {}
        self._policies: dict[str, TaskCachePolicy] = {
            k: v.model_copy() for k, v in {**measured, **self.config.tasks}.items()
        }
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # LRU order, oldest first
        self._exact: dict[tuple[str, str, str], int] = {}  # (ns, task, text key) -> entry id
        self._by_request: dict[str, int] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._expiry: list[tuple[float, int]] = []
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._rejected: OrderedDict[str, None] = OrderedDict()
        self._served: OrderedDict[str, str] = OrderedDict()  # request served from cache -> source
        self._ids = itertools.count(1)
        self._dim: int | None = None
        self._counts: Counter[str] = Counter()
        faiss.omp_set_num_threads(self.config.search_threads)

    # -- policy

    def policy(self, task: str | None) -> TaskCachePolicy:
        """The effective policy of ``task`` (defaults filled in)."""
        p = self._policies.get(task or DEFAULT_TASK)
        return TaskCachePolicy(
            threshold=p.threshold if p and p.threshold is not None else self.config.threshold,
            ttl_s=p.ttl_s if p and p.ttl_s is not None else self.config.ttl_s,
            enabled=p.enabled if p else True,
        )

    def set_policy(
        self, task: str | None, threshold: float | None = None, enabled: bool | None = None
    ) -> None:
        """Change a task's threshold or switch it on/off at runtime (the false-hit alert does).
        Switching a task off drops nothing: its entries are just not served until it is back on."""
        if threshold is not None and not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        with self._lock:
            key = task or DEFAULT_TASK
            p = self._policies.get(key, TaskCachePolicy())
            update: dict[str, Any] = {}
            if threshold is not None:
                update["threshold"] = threshold
            if enabled is not None:
                update["enabled"] = enabled
            self._policies[key] = p.model_copy(update=update)
        log.info("semantic cache policy for task %s: %s", key, self._policies[key])

    def _live(self, task: str | None) -> tuple[bool, float, float]:
        p = self._policies.get(task or DEFAULT_TASK)
        enabled = self.config.enabled and (p.enabled if p else True)
        threshold = p.threshold if p and p.threshold is not None else self.config.threshold
        ttl = p.ttl_s if p and p.ttl_s is not None else self.config.ttl_s
        return enabled, threshold, ttl

    # -- lookup

    def lookup(
        self, ns: str, task: str | None, text: str, vector: Any = None, *, request_id: str | None = None
    ) -> CacheHit | None:
        """The cached answer for ``text`` in ``ns``/``task``, or None. ``vector``: the router's
        query embedding (None: exact match only). ``request_id``: the request being served, so
        negative feedback on it (``reject(request_id)``) also drops the answer it was served."""
        enabled, threshold, _ = self._live(task)
        if not enabled:
            self._counts["bypass"] += 1
            return None
        t = task or DEFAULT_TASK
        now = self.clock()
        key = text_key(text)
        with self._lock:
            eid = self._exact.get((ns, t, key))
            if eid is not None:
                e = self._entries.get(eid)
                if e is not None and e.expires_at > now:
                    return self._serve(e, 1.0, True, request_id)
                if e is not None and e.expires_at <= now:
                    self._drop(e, "expired")
            vec = _unit(vector, self._dim) if vector is not None else None
            bucket = self._buckets.get((ns, t))
            if vec is None or bucket is None or threshold >= 1.0:  # 1.0: exact repeats only
                self._counts["miss"] += 1
                return None
            fp_query: Fingerprint | None = None
            refused = False
            for eid, sim in bucket.search(vec, SEARCH_K):
                if sim < threshold:
                    break
                e = self._entries[eid]
                if e.expires_at <= now:
                    self._drop(e, "expired")
                    continue
                if self.config.guard:
                    fp_query = fp_query or fingerprint(text)
                    reason = guard_refusal(e.fp, fp_query)
                    if reason is not None:
                        self._counts[f"guard_{reason}"] += 1
                        refused = True
                        continue
                return self._serve(e, sim, False, request_id)
            self._counts["miss_guarded" if refused else "miss"] += 1
            return None

    def _serve(self, e: _Entry, sim: float, exact: bool, request_id: str | None) -> CacheHit:
        self._entries.move_to_end(e.eid)
        e.hits += 1
        self._counts["hit_exact" if exact else "hit_semantic"] += 1
        if request_id is not None:
            self._served[request_id] = e.request_id
            while len(self._served) > self.config.capacity:
                self._served.popitem(last=False)
        return CacheHit(e.answer, sim, e.request_id, exact, None if e.task == DEFAULT_TASK else e.task)

    # -- admission

    def offer(
        self, request_id: str, ns: str, task: str | None, text: str, vector: Any, answer: dict, *, good: bool
    ) -> bool:
        """A fresh answer: stored at once when ``good`` (strong tier), else held until
        :meth:`confirm`. Returns True when it was stored now."""
        enabled, _, _ = self._live(task)
        if not enabled:
            return False
        t = task or DEFAULT_TASK
        with self._lock:
            if request_id in self._rejected:
                return False
            now = self.clock()
            self._purge(now)
            vec = _unit(vector, self._dim)
            if good:
                return self._admit(request_id, ns, t, text, vec, answer, now) is not None
            if self.config.pending_capacity == 0:
                return False
            self._pending[request_id] = _Pending(
                request_id, ns, t, text, vec, answer, now + self.config.pending_ttl_s
            )
            self._pending.move_to_end(request_id)
            while len(self._pending) > self.config.pending_capacity:
                self._pending.popitem(last=False)
                self._counts["pending_dropped"] += 1
            return False

    def confirm(self, request_id: str) -> bool:
        """A positive signal for ``request_id``: admits its pending answer (never a rejected one).
        Returns True when an answer was stored."""
        with self._lock:
            p = self._pending.pop(request_id, None)
            if p is None or request_id in self._rejected:
                return False
            now = self.clock()
            if p.expires_at <= now:
                self._counts["pending_expired"] += 1
                return False
            return self._admit(p.request_id, p.ns, p.task, p.text, p.vector, p.answer, now) is not None

    def reject(self, request_id: str, *, _replicate: bool = True) -> bool:
        """A negative signal for ``request_id``: its answer leaves pending and the cache and is
        never admitted later. When ``request_id`` was itself served from the cache, the answer it
        was served (its source) is rejected too. Returns True when something was dropped."""
        dropped = False
        with self._lock:
            targets = [request_id]
            source = self._served.pop(request_id, None)
            if source is not None:
                targets.append(source)
            for rid in targets:
                self._rejected[rid] = None
                self._rejected.move_to_end(rid)
                dropped |= self._pending.pop(rid, None) is not None
                eid = self._by_request.get(rid)
                if eid is not None and eid in self._entries:
                    self._drop(self._entries[eid], "rejected")
                    dropped = True
            while len(self._rejected) > self.config.rejected_capacity:
                self._rejected.popitem(last=False)
        if _replicate and self.on_reject is not None:
            for rid in targets:
                self.on_reject(rid)
        return dropped

    def _admit(
        self,
        request_id: str,
        ns: str,
        task: str,
        text: str,
        vec: np.ndarray | None,
        answer: dict,
        now: float,
        *,
        expires_at: float | None = None,
        replicate: bool = True,
    ) -> _Entry | None:
        if request_id in self._rejected or request_id in self._by_request:
            return None
        _, _, ttl = self._live(task)
        key = text_key(text)
        old = self._exact.get((ns, task, key))
        if old is not None and old in self._entries:
            self._drop(self._entries[old], "replaced")
        if vec is not None and self._dim is None:
            self._dim = vec.shape[0]
        e = _Entry(
            next(self._ids),
            request_id,
            ns,
            task,
            key,
            vec,
            answer,
            fingerprint(text),
            expires_at if expires_at is not None else now + ttl,
            (ns, task),
        )
        self._entries[e.eid] = e
        self._exact[(ns, task, key)] = e.eid
        self._by_request[request_id] = e.eid
        heapq.heappush(self._expiry, (e.expires_at, e.eid))
        if vec is not None:
            b = self._buckets.get(e.bucket)
            if b is None:
                b = self._buckets[e.bucket] = _Bucket(vec.shape[0], self.config.hnsw_min_entries)
            b.add(e.eid, vec)
        self._counts["admitted"] += 1
        while len(self._entries) > self.config.capacity:
            self._drop(next(iter(self._entries.values())), "evicted")
        if replicate and self.on_admit is not None:
            self.on_admit(
                {
                    "request_id": request_id,
                    "ns": ns,
                    "task": task,
                    "text": text,
                    "answer": answer,
                    "expires_at": e.expires_at,
                    "vector": None if vec is None else vec.tolist(),
                }
            )
        return e

    def admit_remote(self, item: dict) -> bool:
        """Store an entry another replica admitted (the shared store's replication); no echo."""
        with self._lock:
            now = self.clock()
            if item["expires_at"] <= now:
                return False
            vec = _unit(item.get("vector"), self._dim)
            e = self._admit(
                item["request_id"],
                item["ns"],
                item["task"],
                item["text"],
                vec,
                item["answer"],
                now,
                expires_at=float(item["expires_at"]),
                replicate=False,
            )
            return e is not None

    def _drop(self, e: _Entry, why: str) -> None:
        if self._entries.pop(e.eid, None) is None:
            return
        if self._exact.get((e.ns, e.task, e.key)) == e.eid:
            del self._exact[(e.ns, e.task, e.key)]
        if self._by_request.get(e.request_id) == e.eid:
            del self._by_request[e.request_id]
        b = self._buckets.get(e.bucket)
        if b is not None and e.vector is not None:
            b.remove(e.eid)
            if not b.live:
                del self._buckets[e.bucket]
        self._counts[why] += 1

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, eid = heapq.heappop(self._expiry)
            e = self._entries.get(eid)
            if e is not None and e.expires_at <= now:
                self._drop(e, "expired")
        if len(self._expiry) > 4 * max(len(self._entries), 1024):  # stale heap items of dropped entries
            self._expiry = [(e.expires_at, e.eid) for e in self._entries.values()]
            heapq.heapify(self._expiry)
        while self._pending:
            p = next(iter(self._pending.values()))
            if p.expires_at > now:
                break
            self._pending.popitem(last=False)
            self._counts["pending_expired"] += 1

    def clear(self) -> None:
        """Drop every entry and pending answer (rejected ids are kept). For a router swap to an
        encoder with another embedding space: old vectors would be compared with new ones."""
        with self._lock:
            self._entries.clear()
            self._exact.clear()
            self._by_request.clear()
            self._buckets.clear()
            self._expiry.clear()
            self._pending.clear()
            self._served.clear()
            self._dim = None

    # -- introspection

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        """Counters for /metrics: entries, pending, hits and misses by kind, guard refusals,
        admissions, evictions, expiries, rejections."""
        with self._lock:
            out = {
                "entries": len(self._entries),
                "pending": len(self._pending),
                "rejected_ids": len(self._rejected),
                "buckets": len(self._buckets),
            }
            for k in (
                "hit_exact",
                "hit_semantic",
                "miss",
                "miss_guarded",
                "bypass",
                "guard_numbers",
                "guard_negation",
                "guard_options",
                "admitted",
                "evicted",
                "expired",
                "rejected",
                "replaced",
                "pending_dropped",
                "pending_expired",
            ):
                out[k] = self._counts[k]
            return out

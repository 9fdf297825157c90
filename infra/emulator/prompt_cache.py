"""The emulator's prompt cache: how much of a prompt a provider would have served from its cache.

Providers bill a prompt prefix they have seen recently at a discount and say how many prompt
tokens that was. The emulator reports the same counts, by two simple, deterministic rules (both
per provider and model, at message granularity, with token counts by :func:`.corpus.prompt_tokens`):

- **automatic** (OpenAI): every prompt of :data:`MIN_TOKENS` tokens or more is cached. A later
  prompt that starts with the same messages (system prompt, few-shot examples, earlier turns) reads
  the longest such prefix seen within :data:`TTL_S`, counted from :data:`MIN_TOKENS` in steps of
  :data:`OPENAI_STEP` tokens (OpenAI's ``prompt_tokens_details.cached_tokens``). No writes are billed.
- **explicit** (Anthropic): only prefixes that end with a message holding a ``cache_control`` block
  (the system prompt or a message) are cached, when they are :data:`MIN_TOKENS` tokens or more. The
  longest marked prefix seen within :data:`TTL_S` is read (``cache_read_input_tokens``); the last
  marked prefix, when it was not read, is written: the tokens it adds to what was read
  (``cache_creation_input_tokens``).

A hit refreshes its entry's time, as both providers do. Only models whose catalog price has a
``cached_input`` rate cache at all (the providers that publish one). What the rules leave out: tool
definitions in the prefix, per-block (rather than per-message) breakpoints, Anthropic's 20-block
look-back, per-organisation caches, eviction before the TTL.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .corpus import prompt_tokens

MIN_TOKENS = 1024  # the shortest cacheable prompt (OpenAI; Anthropic's Sonnet/Opus models)
OPENAI_STEP = 128  # OpenAI reports cache hits in steps of 128 tokens above the minimum
TTL_S = 300.0  # five minutes: Anthropic's default TTL, OpenAI's usual minimum
MAX_ENTRIES = 100_000  # least recently used prefixes beyond this are forgotten


@dataclass(frozen=True)
class CacheUse:
    """Prompt tokens read from and written to the cache by one request (both part of its prompt)."""

    read: int = 0
    written: int = 0


class PromptCache:
    """Prefixes seen recently, per model: ``use`` answers one request and remembers its prefixes."""

    def __init__(
        self,
        ttl_s: float = TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # prefix key -> last use

    def use(self, model: str, texts: Sequence[str], breaks: Sequence[int] | None) -> CacheUse:
        """The cache reads and writes of a prompt of ``texts`` (one per message, system first).
        ``breaks``: indices of the messages that end a marked prefix (explicit rule), or ``None``
        for the automatic rule."""
        now = self._clock()
        keys = _prefix_keys(model, texts)
        sizes = [prompt_tokens(texts[: i + 1]) for i in range(len(texts))]
        if breaks is None:
            ends = [i for i in range(len(texts)) if sizes[i] >= MIN_TOKENS]
        else:
            ends = sorted({i for i in breaks if 0 <= i < len(texts) and sizes[i] >= MIN_TOKENS})
        hits = [i for i in ends if self._fresh(keys[i], now)]
        read = sizes[hits[-1]] if hits else 0
        written = 0
        if breaks is None:
            if read:
                read = MIN_TOKENS + (read - MIN_TOKENS) // OPENAI_STEP * OPENAI_STEP
        elif ends and (not hits or hits[-1] != ends[-1]):
            written = sizes[ends[-1]] - read
        for i in ends:
            self._remember(keys[i], now)
        return CacheUse(read, written)

    def clear(self) -> None:
        self._seen.clear()

    def _fresh(self, key: bytes, now: float) -> bool:
        last = self._seen.get(key)
        return last is not None and now - last <= self.ttl_s

    def _remember(self, key: bytes, now: float) -> None:
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)


def _prefix_keys(model: str, texts: Sequence[str]) -> list[bytes]:
    """A digest of every message prefix (model included): one running hash, a copy per boundary."""
    h = hashlib.blake2b(model.encode("utf-8"), digest_size=16)
    keys = []
    for t in texts:
        raw = t.encode("utf-8", "replace")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
        keys.append(h.copy().digest())
    return keys

"""Near-duplicate traffic for the semantic cache: benign paraphrases and traps, from benchmark prompts.

A semantic cache earns its savings on repeats and paraphrases and loses quality on *traps*: edits
that keep a prompt's embedding close but change its right answer. Each generated
:class:`Variant` says its ``kind``, its source prompt id and whether the source's recorded answer
is still right for it (``same_answer``):

* same answer: ``exact`` (a verbatim repeat), ``whitespace``, ``case``, ``punctuation``,
  ``prefix`` ("Please answer:", "Question:"), ``suffix`` ("Thanks").
* traps (``same_answer=False``): ``reorder_options`` (MMLU-style ``A. ... B. ...`` contents
  permuted, so the right letter moves), ``change_numbers`` (a number of a GSM8K-style problem
  changed, so the result changes), ``negate`` (a ``not`` or a flipped superlative in the
  question, so the right option changes).

Few-shot prompts (RouterBench's ARC and WinoGrande) are edited in their last block only, the
question actually asked. Everything is deterministic for a given seed.
:func:`near_duplicate_traffic` builds a request stream where a share of the requests are
near-duplicates of earlier ones.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BENIGN_KINDS = ("exact", "whitespace", "case", "punctuation", "prefix", "suffix")
TRAP_KINDS = ("reorder_options", "change_numbers", "negate")
KINDS = BENIGN_KINDS + TRAP_KINDS
# most near-duplicates in real traffic are repeats and rewordings; the traps (15 % of them here)
# are the edits a cache must not serve
DEFAULT_MIX: dict[str, float] = {
    "exact": 0.30,
    "whitespace": 0.10,
    "case": 0.08,
    "punctuation": 0.10,
    "prefix": 0.15,
    "suffix": 0.12,
    "reorder_options": 0.05,
    "change_numbers": 0.05,
    "negate": 0.05,
}
PREFIXES = ("Please answer: ", "Question: ", "Quick question. ", "Can you help me with this? ", "Hi! ")
SUFFIXES = (" Thanks", "\nThanks!", " Thank you.", "\n\nThanks in advance.")

_OPTION_LINE = re.compile(r"^(\s*\(?)([A-J])([.):]\s*)(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"(?<![\w.,])\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")
# where a "not" goes: the first auxiliary verb of the question, else before the first verb-ish word
_AUX = re.compile(
    r"\b(is|are|was|were|does|do|did|can|could|will|would|should|has|have|had|must|may|might)\b(?! not\b)",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r" (?:he|she|it|they|we|you|I|[A-Z][a-z]+)\b(?!['’])")  # not a possessive
_FLIPS = {
    "most": "least",
    "least": "most",
    "true": "false",
    "false": "true",
    "best": "worst",
    "largest": "smallest",
    "smallest": "largest",
    "highest": "lowest",
    "lowest": "highest",
}
_FLIP = re.compile(r"\b(" + "|".join(_FLIPS) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class Variant:
    """A near-duplicate of a source prompt."""

    kind: str
    source_id: str
    prompt: str
    same_answer: bool


@dataclass(frozen=True)
class TrafficItem:
    """One request of a near-duplicate stream: ``kind == "fresh"`` for a benchmark prompt as it is
    (``source_id`` is then its own id), else a :class:`Variant` of an earlier request."""

    id: str
    source_id: str
    task: str
    prompt: str
    kind: str
    same_answer: bool


def _split_last_block(prompt: str) -> tuple[str, str]:
    """(few-shot head, the question asked): the last blank-line-separated block that is not just an
    instruction line; the whole prompt when there is one block."""
    idx = prompt.rfind("\n\n")
    if idx < 0:
        return "", prompt
    return prompt[: idx + 2], prompt[idx + 2 :]


def _reorder_options(prompt: str, rng: random.Random) -> str | None:
    head, last = _split_last_block(prompt)
    lines = list(_OPTION_LINE.finditer(last))
    contents = [m.group(4) for m in lines]
    if len(lines) < 2 or len(set(contents)) < len(contents):
        return None
    order = list(range(len(contents)))
    while order == sorted(order):
        rng.shuffle(order)
    out, pos = [], 0
    for m, j in zip(lines, order, strict=True):
        out.append(last[pos : m.start()])
        out.append(f"{m.group(1)}{m.group(2)}{m.group(3)}{contents[j]}")
        pos = m.end()
    out.append(last[pos:])
    return head + "".join(out)


def _change_numbers(prompt: str, rng: random.Random) -> str | None:
    head, last = _split_last_block(prompt)
    # not inside the options (that would be reorder territory) nor an option letter's line prefix
    body_end = min((m.start() for m in _OPTION_LINE.finditer(last)), default=len(last))
    found = [m for m in _NUMBER.finditer(last[:body_end])]
    if not found:
        return None
    m = rng.choice(found)
    old = m.group(0).replace(",", "")
    if "." in old:
        new = f"{float(old) + rng.choice((0.5, 1.5, 2.5)):g}"
    else:
        v = int(old)
        new = str(v + rng.choice((1, 2, 3, 5)) if v < 10 else v + rng.choice((2, 5, 10, 12)))
    return head + last[: m.start()] + new + last[m.end() :]


def _negate(prompt: str, rng: random.Random) -> str | None:
    head, last = _split_last_block(prompt)
    body_end = min((m.start() for m in _OPTION_LINE.finditer(last)), default=len(last))
    body = last[:body_end]
    flip = _FLIP.search(body)
    if flip is not None and rng.random() < 0.5:
        word = flip.group(0)
        repl = _FLIPS[word.lower()]
        repl = repl.capitalize() if word[0].isupper() else repl
        return head + body[: flip.start()] + repl + body[flip.end() :] + last[body_end:]
    # the first auxiliary of the last sentence (the question asked), else of the whole body
    last_sentence = max(body.rstrip().rfind(". "), body.rstrip().rfind("? "), body.rstrip().rfind("\n")) + 1
    m = _AUX.search(body, last_sentence) or _AUX.search(body)
    if m is None:
        return None
    end = m.end()
    inverted = _PRONOUN.match(body, end)  # "does he run" -> "does he not run"
    if inverted is not None and body.rstrip().endswith("?"):
        end = inverted.end()
    return head + body[:end] + " not" + body[end:] + last[body_end:]


def _benign(kind: str, prompt: str, rng: random.Random) -> str:
    if kind == "exact":
        return prompt
    if kind == "whitespace":
        words = prompt.split(" ")
        i = rng.randrange(len(words))
        words[i] = words[i] + " "
        return ("  " if rng.random() < 0.5 else "") + " ".join(words) + rng.choice(("", " ", "\n"))
    if kind == "case":
        return prompt.lower() if rng.random() < 0.5 else prompt[:1].swapcase() + prompt[1:]
    if kind == "punctuation":
        q = prompt.rfind("?")
        if q >= 0:  # the question mark goes or doubles
            return prompt[:q] + rng.choice(("", "??", " ?")) + prompt[q + 1 :]
        stripped = prompt.rstrip()
        return stripped[:-1] if stripped.endswith((".", "!")) else stripped + "?"
    if kind == "prefix":
        return rng.choice(PREFIXES) + prompt
    if kind == "suffix":
        return prompt.rstrip() + rng.choice(SUFFIXES)
    raise ValueError(f"unknown benign kind {kind!r}")


def make_variant(kind: str, source_id: str, prompt: str, rng: random.Random) -> Variant | None:
    """A variant of ``prompt`` of ``kind``, or None when the kind does not apply (no options to
    reorder, no number to change, no place for a negation)."""
    if kind in BENIGN_KINDS:
        return Variant(kind, source_id, _benign(kind, prompt, rng), True)
    edit = {"reorder_options": _reorder_options, "change_numbers": _change_numbers, "negate": _negate}.get(
        kind
    )
    if edit is None:
        raise ValueError(f"unknown variant kind {kind!r} (known: {', '.join(KINDS)})")
    out = edit(prompt, rng)
    if out is None or out == prompt:
        return None
    return Variant(kind, source_id, out, False)


def near_duplicate(
    source_id: str, prompt: str, rng: random.Random, mix: Mapping[str, float] | None = None
) -> Variant:
    """A near-duplicate of ``prompt`` whose kind is drawn from ``mix`` (default
    :data:`DEFAULT_MIX`) among the kinds that apply to it; a verbatim repeat when none does."""
    left = {k: w for k, w in (mix or DEFAULT_MIX).items() if w > 0}
    while left:
        kind = rng.choices(list(left), list(left.values()))[0]
        del left[kind]
        if (variant := make_variant(kind, source_id, prompt, rng)) is not None:
            return variant
    return Variant("exact", source_id, prompt, True)


def variants(source_id: str, prompt: str, kinds: Iterable[str] = KINDS, *, seed: int = 0) -> list[Variant]:
    """One variant per applicable kind of one prompt (deterministic per seed and source id)."""
    rng = random.Random(f"{seed}:{source_id}")
    return [v for k in kinds if (v := make_variant(k, source_id, prompt, rng)) is not None]


def _row(r: Mapping | object) -> tuple[str, str, str]:
    if isinstance(r, Mapping):
        return str(r["id"]), str(r["task"]), str(r["prompt"])
    return str(r.id), str(r.task), str(r.prompt)  # type: ignore[attr-defined]


def near_duplicate_traffic(
    rows: Sequence[Mapping | object],
    share: float = 0.30,
    mix: Mapping[str, float] | None = None,
    seed: int = 0,
) -> list[TrafficItem]:
    """A request stream of every row once (``fresh``, in order) plus near-duplicates of earlier
    requests so that ``share`` of the stream are near-duplicates. Each near-duplicate's kind is
    drawn from ``mix`` (default :data:`DEFAULT_MIX`) among the kinds that apply to its source (a
    prompt without options cannot have them reordered); its source is a uniformly drawn earlier
    fresh request. Rows: mappings or objects with ``id``, ``task``, ``prompt``."""
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    mix = dict(mix or DEFAULT_MIX)
    unknown = set(mix) - set(KINDS)
    if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"bad mix {mix} (kinds: {', '.join(KINDS)}; weights >= 0, positive sum)")
    rng = random.Random(seed)
    base = [_row(r) for r in rows]
    n_dup = round(len(base) * share / (1 - share)) if base else 0
    total = len(base) + n_dup
    dup_at = set(rng.sample(range(1, total), n_dup)) if n_dup else set()
    out: list[TrafficItem] = []
    seen: list[tuple[str, str, str]] = []
    nxt = 0
    dup_count: dict[str, int] = {}
    for pos in range(total):
        if pos not in dup_at:  # position 0 never is: there is always an earlier request
            rid, task, prompt = base[nxt]
            nxt += 1
            seen.append((rid, task, prompt))
            out.append(TrafficItem(rid, rid, task, prompt, "fresh", True))
            continue
        rid, task, prompt = rng.choice(seen)
        variant = near_duplicate(rid, prompt, rng, mix)
        k = dup_count[rid] = dup_count.get(rid, 0) + 1
        out.append(TrafficItem(f"{rid}#dup{k}", rid, task, variant.prompt, variant.kind, variant.same_answer))
    return out

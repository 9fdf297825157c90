"""The emulator's answer book: benchmark prompts indexed for O(1) lookup, and the answer rules.

Built once at start from the :mod:`training.data` loaders. A prompt is matched by the exact text of
the last user message after whitespace normalisation. Answer rules:

* GSM8K and RouterBench record each model's answer text: the emulator replays it.
* MMLU records only correctness: a right answer is ``Answer: X`` with a per-prompt letter X derived
  from the prompt hash (the true letter is not in the data), a wrong one names another letter.
* A model without a grade for the prompt, or an unknown prompt, gets a deterministic generic
  answer whose correctness is unknown.
* A drifted model answers a right-graded prompt wrongly: another model's recorded wrong answer
  where one exists, else a wrong letter (MMLU) or a generic wrong answer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from services.contracts import prompt_hash

log = logging.getLogger(__name__)

LETTERS = "ABCD"
CACHE_VERSION = 1


def normalize(text: str) -> str:
    """Collapse all whitespace runs to one space and strip: the key prompts are matched by."""
    return " ".join(text.split())


def count_tokens(text: str) -> int:
    """Approximate token count (≈4 characters per token, as OpenAI's rule of thumb); at least 1."""
    return max(1, math.ceil(len(text) / 4))


def prompt_tokens(texts: Iterable[str]) -> int:
    """Prompt tokens of a conversation: its texts plus a small per-message overhead (like OpenAI)."""
    total = 3
    for t in texts:
        total += count_tokens(t) + 4
    return total


def split_words(text: str) -> list[str]:
    """Split text into word pieces that concatenate back to exactly ``text`` (stream deltas)."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces = [tail]
    return pieces


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (stable across processes, unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Answer:
    """What a model answers to a prompt, and whether that answer is right (None: unknown)."""

    text: str
    correct: float | None
    drifted: bool = False


@dataclass
class PromptRecord:
    """One benchmark prompt: its identity, task and every model's grade and recorded answer."""

    prompt: str
    prompt_hash: str
    task: str
    dataset: str
    labels: dict[str, float] = field(default_factory=dict)
    responses: dict[str, str] = field(default_factory=dict)

    @property
    def right_letter(self) -> str:
        """The emulator's stand-in for the right MMLU letter (the data does not say which it is)."""
        return LETTERS[int(self.prompt_hash[:8], 16) % 4]

    def wrong_letter(self, model: str) -> str:
        others = [c for c in LETTERS if c != self.right_letter]
        return others[int(_unit(self.prompt_hash, model) * 3)]

    def recorded(self, model: str) -> Answer:
        """The model's answer as recorded (no drift)."""
        label = self.labels.get(model)
        if label is None:
            return Answer(generic_answer(self.prompt_hash, model), None)
        if self.dataset == "mmlu":
            letter = self.right_letter if label >= 0.5 else self.wrong_letter(model)
            return Answer(f"Answer: {letter}", label)
        text = self.responses.get(model)
        if not text:
            text = generic_answer(self.prompt_hash, model)
        return Answer(text, label)

    def drifted(self, model: str) -> Answer:
        """The model's answer once it has drifted: wrong wherever it was right."""
        base = self.recorded(model)
        if base.correct is None or base.correct < 0.5:
            return base
        if self.dataset == "mmlu":
            return Answer(f"Answer: {self.wrong_letter(model)}", 0.0, drifted=True)
        for other in sorted(self.labels):
            if other != model and self.labels[other] < 0.5 and self.responses.get(other):
                return Answer(self.responses[other], 0.0, drifted=True)
        return Answer(
            "I am not sure about this one; my best guess is that none of the usual answers apply.",
            0.0,
            drifted=True,
        )

    def grade(self, answer: str) -> float | None:
        """Ground-truth grade of an arbitrary answer text to this prompt, or None if it can't tell.

        An answer equal (after normalisation) to a model's recorded answer gets that model's grade;
        an MMLU answer is graded by its letter.
        """
        norm = normalize(answer)
        if self.dataset == "mmlu":
            m = re.search(r"(?:answer\s*(?:is)?\s*[:\-]?\s*\(?|^\(?)([A-D])\b", norm, re.IGNORECASE)
            if not m:
                return None
            return 1.0 if m.group(1).upper() == self.right_letter else 0.0
        grades = {
            self.labels[m]
            for m, text in self.responses.items()
            if m in self.labels and normalize(text) == norm
        }
        if len(grades) == 1:
            return grades.pop()
        if grades:
            return sum(grades) / len(grades)
        return None


def generic_answer(p_hash: str, model: str) -> str:
    """The deterministic answer for a prompt the model has no recorded answer to."""
    return (
        f"This is an emulated answer from {model}. The benchmark data holds no recorded answer of "
        f"this model for this prompt (ref {p_hash[:12]}), so this text stands in for one."
    )


class Corpus:
    """Benchmark prompts by normalised text and by prompt hash (of the raw and normalised text)."""

    def __init__(self, records: Iterable[PromptRecord]) -> None:
        self.by_text: dict[str, PromptRecord] = {}
        self.by_hash: dict[str, PromptRecord] = {}
        dupes = 0
        for rec in records:
            key = normalize(rec.prompt)
            if key in self.by_text:
                dupes += 1
                continue
            self.by_text[key] = rec
            self.by_hash.setdefault(rec.prompt_hash, rec)
            self.by_hash.setdefault(prompt_hash(key), rec)
        if dupes:
            log.info("corpus: %d duplicate prompts kept once (first occurrence wins)", dupes)

    def __len__(self) -> int:
        return len(self.by_text)

    def lookup(self, prompt: str) -> PromptRecord | None:
        """The record of a prompt text (whitespace-normalised), or None for an unknown prompt."""
        return self.by_text.get(normalize(prompt))

    def tasks(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.by_text.values():
            out[rec.task] = out.get(rec.task, 0) + 1
        return out

    @classmethod
    def from_frame(cls, frame: object) -> Corpus:
        """Build from a :class:`training.data.Benchmark` frame (id, dataset, task, prompt, ...)."""
        return cls(_records_from_frame(frame))

    @classmethod
    def load(
        cls, data_dir: Path, datasets: Iterable[str] | None = None, cache_dir: Path | None = None
    ) -> Corpus:
        """Load the benchmarks present under ``data_dir`` (optionally only some datasets).

        With ``cache_dir`` the indexed records are pickled there, keyed on the data files (path,
        size, mtime) and the loader code, so a later start skips CSV parsing (tests start many
        emulators). The cache is the project's own state directory, never a shared location.
        """
        loaders = ("mmlu", "gsm8k", "routerbench")
        wanted = list(datasets) if datasets else list(loaders)
        unknown = [d for d in wanted if d not in loaders]
        if unknown:
            raise ValueError(f"unknown datasets {unknown}; choose from {sorted(loaders)}")
        cache = Path(cache_dir) / f"corpus-{_cache_key(Path(data_dir), wanted)}.pkl" if cache_dir else None
        if cache is not None and cache.exists():
            try:
                with cache.open("rb") as fh:
                    records = pickle.load(fh)
                log.info("corpus: %d records from cache %s", len(records), cache)
                return cls(records)
            except Exception as exc:  # any unreadable or stale cache is rebuilt, never trusted
                log.warning("corpus: ignoring unreadable cache %s: %s", cache, exc)
        records = _read_records(Path(data_dir), wanted)
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".{os.getpid()}.tmp")
                with tmp.open("wb") as fh:
                    pickle.dump(records, fh, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, cache)
            except OSError as exc:
                log.warning("corpus: cannot write cache %s: %s", cache, exc)
        return cls(records)


def _records_from_frame(df: object) -> list[PromptRecord]:
    """One :class:`PromptRecord` per row of a :class:`training.data.Benchmark` frame."""
    import pandas as pd

    frame: pd.DataFrame = df  # type: ignore[assignment]
    label_cols = [c for c in frame.columns if c.startswith("label:")]
    resp_cols = {c[len("response:") :]: c for c in frame.columns if c.startswith("response:")}
    records = []
    for row in frame.to_dict("records"):
        labels = {
            c[len("label:") :]: float(row[c])
            for c in label_cols
            if row[c] is not None and not (isinstance(row[c], float) and math.isnan(row[c]))
        }
        responses = {m: row[c] for m, c in resp_cols.items() if isinstance(row[c], str) and row[c].strip()}
        records.append(
            PromptRecord(
                prompt=str(row["prompt"]),
                prompt_hash=str(row["prompt_hash"]),
                task=str(row["task"]),
                dataset=str(row["dataset"]),
                labels=labels,
                responses=responses,
            )
        )
    return records


def _read_records(data_dir: Path, wanted: list[str]) -> list[PromptRecord]:
    import pandas as pd

    from training.data import DataNotFoundError, load_gsm8k, load_mmlu, load_routerbench

    loaders = {"mmlu": load_mmlu, "gsm8k": load_gsm8k, "routerbench": load_routerbench}
    frames = []
    for name in wanted:
        try:
            frames.append(loaders[name](data_dir).frame)
        except DataNotFoundError as exc:
            log.warning("emulator: skipping %s: %s", name, exc)
    if not frames:
        raise FileNotFoundError(f"no benchmark data under {data_dir}; set SWITCHYARD_DATA_DIR")
    return _records_from_frame(pd.concat(frames, ignore_index=True))


def _cache_key(data_dir: Path, wanted: list[str]) -> str:
    """Changes whenever a data file, the dataset choice or the loading code changes."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{data_dir.resolve()}|{','.join(wanted)}".encode())
    for f in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(data_dir)}|{st.st_size}|{st.st_mtime_ns}".encode())
    spec = importlib.util.find_spec("training.data")
    for code in (Path(__file__), Path(spec.origin) if spec and spec.origin else None):
        if code is not None:
            h.update(code.read_bytes())
    return h.hexdigest()[:24]

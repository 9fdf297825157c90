"""The judge model (``switchyard/judge``): grades an answer to a question as the ground truth says.

Prompt format (the last user message; text outside the markers is ignored)::

    [QUESTION]
    <the question, exactly as asked>
    [ANSWER]
    <the answer to grade>
    [END]

The judge replies ``GRADE: 1`` (acceptable) or ``GRADE: 0`` (not acceptable) where the ground truth
decides, and ``GRADE: 0.5`` where it cannot (unknown question, or an answer unlike any recorded
one). :func:`judge_prompt` builds the prompt and :func:`parse_grade` reads the reply, so callers
(the gateway's scorer, distillation) and the emulator agree on the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .corpus import Corpus

JUDGE_MODEL = "switchyard/judge"
UNSURE = 0.5

_PROMPT = re.compile(r"\[QUESTION\]\s*\n(?P<q>.*?)\n\s*\[ANSWER\]\s*\n(?P<a>.*?)\n?\s*\[END\]", re.DOTALL)
_GRADE = re.compile(r"GRADE:\s*([01](?:\.\d+)?)")


class JudgePromptError(ValueError):
    """The judge's input is not in the documented format."""


def judge_prompt(question: str, answer: str) -> str:
    """The grading prompt for (question, answer), in the format the emulator's judge reads."""
    return (
        "Grade whether the answer correctly answers the question.\n"
        f"[QUESTION]\n{question}\n[ANSWER]\n{answer}\n[END]\n"
        "Reply with exactly `GRADE: 1` if it is correct and `GRADE: 0` if it is not."
    )


def parse_grade(reply: str) -> float:
    """The grade (0..1) in a judge reply; raises ValueError if there is none."""
    m = _GRADE.search(reply)
    if not m:
        raise ValueError(f"no 'GRADE: <0..1>' in judge reply {reply[:80]!r}")
    return float(m.group(1))


@dataclass(frozen=True)
class Verdict:
    """The judge's grade and whether the ground truth decided it."""

    grade: float
    known: bool

    @property
    def reply(self) -> str:
        g = "1" if self.grade == 1.0 else "0" if self.grade == 0.0 else f"{self.grade:g}"
        return f"GRADE: {g}"


def grade(corpus: Corpus, prompt: str) -> Verdict:
    """Grade the (question, answer) in a judge prompt against the benchmark ground truth."""
    m = _PROMPT.search(prompt)
    if not m:
        raise JudgePromptError("judge prompt must contain [QUESTION] ... [ANSWER] ... [END] blocks")
    record = corpus.lookup(m.group("q"))
    if record is None:
        return Verdict(UNSURE, False)
    g = record.grade(m.group("a"))
    if g is None:
        return Verdict(UNSURE, False)
    return Verdict(1.0 if g >= 0.5 else 0.0, True)

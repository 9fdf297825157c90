"""Answer scorers for cascades: how sure are we that a cheap model's answer is good enough?

``JudgeScorer`` asks a judge model through the provider layer, in the grading format the
emulator's judge documents (``[QUESTION]``/``[ANSWER]``/``[END]`` → ``GRADE: x``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Protocol

from services.errors import UpstreamError
from services.providers.base import ChatAdapter

log = logging.getLogger(__name__)

_GRADE = re.compile(r"GRADE:\s*([01](?:\.\d+)?)")


class AnswerScorer(Protocol):
    """P(answer acceptable) for (question, answer); ``None`` when it cannot tell."""

    async def score(self, question: str, answer: str, task: str | None, model: str) -> float | None: ...


def judge_prompt(question: str, answer: str) -> str:
    return (
        "Grade whether the answer correctly answers the question.\n"
        f"[QUESTION]\n{question}\n[ANSWER]\n{answer}\n[END]\n"
        "Reply with exactly `GRADE: 1` if it is correct and `GRADE: 0` if it is not."
    )


@dataclass(frozen=True)
class Verdict:
    """A judge's grade with the judge call's token usage (for pricing it)."""

    score: float | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JudgeScorer:
    """Scores an answer by asking a judge model (one upstream call per scored answer)."""

    def __init__(self, adapter: ChatAdapter, judge_model: str):
        self.adapter = adapter
        self.judge_model = judge_model

    async def score(self, question: str, answer: str, task: str | None, model: str) -> float | None:
        return (await self.grade(question, answer)).score

    async def grade(self, question: str, answer: str) -> Verdict:
        """The judge's grade and what the judge call used; score ``None`` when it failed."""
        payload = {
            "messages": [{"role": "user", "content": judge_prompt(question, answer)}],
            "temperature": 0,
        }
        try:
            result = await self.adapter.complete(payload, self.judge_model)
        except UpstreamError as exc:
            log.warning("judge %s failed: %s", self.judge_model, exc.message)
            return Verdict(None)
        m = _GRADE.search(result.content)
        return Verdict(float(m.group(1)) if m else None, result.prompt_tokens, result.completion_tokens)

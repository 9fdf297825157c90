"""The cascade answer scorer: P(the cheap model's answer is acceptable | prompt, answer).

Cascade mode calls the cheap model first and escalates when this scorer doubts the answer. It
reads the answer text: whether it reaches a final answer, whether its worked arithmetic is right
(``a op b = c`` steps and GSM8K-style ``<<expr=value>>`` annotations are re-computed), how many
steps it takes, hedging, and whether the final number just repeats one from the question; plus the
router's prompt embedding. A logistic model on standardised features (numpy weights).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Sequence

import numpy as np

from .heads import sigmoid

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_CALC_RE = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_EQ_RE = re.compile(rf"((?:{_NUM}\s*[-+*/x×÷]\s*)+{_NUM})\s*=\s*({_NUM})")
_FINAL_RE = re.compile(rf"(?:####|answer is|answer:|final answer)[^\d-]{{0,20}}({_NUM})", re.IGNORECASE)
_HEDGE = ("approximately", "assume", "cannot", "can't", "not possible", "unclear", "not enough", "however")

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

FEATURE_NAMES = [
    "has_final",
    "has_hash_marker",
    "n_checks",
    "n_wrong",
    "frac_wrong",
    "log_len_answer",
    "log_len_prompt",
    "n_lines",
    "n_numbers_answer",
    "n_numbers_prompt",
    "final_is_int",
    "final_negative",
    "final_in_prompt",
    "final_log_mag",
    "n_hedge",
    "final_repeated",
]


def _num(s: str) -> float | None:
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return float(s)
    except ValueError:
        return None


def _eval(expr: str) -> float | None:
    expr = expr.replace(",", "").replace("$", "").replace("x", "*").replace("×", "*").replace("÷", "/")
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        return None

    def ev(n: ast.AST) -> float:
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float):
            return float(n.value)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        raise ValueError("unsupported")

    try:
        return ev(node)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(1e-6, 0.011 * max(abs(a), abs(b)) if abs(a) < 1 else 0.006 * abs(b) + 0.01)


def answer_features(prompt: str, answer: str | None) -> list[float]:
    """Hand-made features of one (prompt, answer) pair, in :data:`FEATURE_NAMES` order."""
    answer = answer or ""
    checks = wrong = 0
    for expr, val in _CALC_RE.findall(answer):
        a, b = _eval(expr), _num(val)
        if a is not None and b is not None:
            checks += 1
            wrong += not _close(a, b)
    for expr, val in _EQ_RE.findall(answer):
        a, b = _eval(expr), _num(val)
        if a is not None and b is not None:
            checks += 1
            wrong += not _close(a, b)
    finals = _FINAL_RE.findall(answer)
    nums_answer = _NUM_RE.findall(answer)
    final = _num(finals[-1]) if finals else (_num(nums_answer[-1]) if nums_answer else None)
    prompt_nums = {_num(x) for x in _NUM_RE.findall(prompt)}
    answer_nums = [_num(x) for x in nums_answer]
    lower = answer.lower()
    return [
        float(bool(finals)),
        float("####" in answer),
        float(checks),
        float(wrong),
        wrong / checks if checks else 0.0,
        math.log1p(len(answer)),
        math.log1p(len(prompt)),
        float(answer.count("\n")),
        float(len(nums_answer)),
        float(len(prompt_nums)),
        float(final is not None and float(final).is_integer()),
        float(final is not None and final < 0),
        float(final is not None and final in prompt_nums),
        math.log1p(abs(final)) if final is not None else 0.0,
        float(sum(lower.count(h) for h in _HEDGE)),
        float(final is not None and answer_nums.count(final) > 1),
    ]


def answer_feature_matrix(prompts: Sequence[str], answers: Sequence[str | None]) -> np.ndarray:
    """Feature rows for many pairs."""
    return np.array([answer_features(p, a) for p, a in zip(prompts, answers, strict=True)], dtype=np.float32)


class CascadeScorer:
    """Logistic scorer over ``[answer features, prompt embedding]`` for one cheap model."""

    def __init__(self, model: str, params: dict[str, np.ndarray], *, use_embedding: bool) -> None:
        for k in ("coef", "intercept", "mean", "std"):
            if k not in params:
                raise ValueError(f"cascade scorer lacks {k!r}")
        self.model = model
        self.use_embedding = use_embedding
        self.params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}

    def design(
        self, prompts: Sequence[str], answers: Sequence[str | None], embeddings: np.ndarray | None
    ) -> np.ndarray:
        x = answer_feature_matrix(prompts, answers)
        if self.use_embedding:
            if embeddings is None:
                raise ValueError("this cascade scorer needs the prompt embeddings")
            x = np.concatenate([x, embeddings.astype(np.float32)], axis=1)
        return x

    def scores(
        self, prompts: Sequence[str], answers: Sequence[str | None], embeddings: np.ndarray | None = None
    ) -> np.ndarray:
        """P(answer acceptable) per pair."""
        x = self.design(prompts, answers, embeddings)
        z = ((x - self.params["mean"]) / self.params["std"]) @ self.params["coef"] + self.params["intercept"][
            0
        ]
        return sigmoid(z)

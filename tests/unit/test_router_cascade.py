"""The cascade answer scorer's features read the cheap answer's arithmetic and final answer."""

from __future__ import annotations

import numpy as np

from services.router.cascade import FEATURE_NAMES, CascadeScorer, answer_features

PROMPT = "Seattle has 20 sheep. Charleston has 4 times as many. How many do they have together?"


def _f(answer: str) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, answer_features(PROMPT, answer), strict=True))


def test_correct_and_wrong_arithmetic_are_told_apart() -> None:
    good = _f("Charleston has 20 x 4 = <<20*4=80>>80 sheep.\nTogether 20 + 80 = <<20+80=100>>100.\n#### 100")
    bad = _f("Charleston has 20 x 4 = <<20*4=60>>60 sheep.\nTogether 20 + 60 = 90.\n#### 90")
    assert good["n_checks"] >= 2 and good["n_wrong"] == 0 and good["has_final"] == 1.0
    assert bad["n_wrong"] >= 2 and bad["frac_wrong"] > 0.5
    assert _f("I cannot tell, it is unclear.")["has_final"] == 0.0
    assert _f("The answer is 20.")["final_in_prompt"] == 1.0


def test_scorer_is_monotone_in_its_weights() -> None:
    n = len(FEATURE_NAMES)
    coef = np.zeros(n, dtype=np.float32)
    coef[FEATURE_NAMES.index("n_wrong")] = -2.0
    scorer = CascadeScorer(
        "m",
        {"coef": coef, "intercept": np.array([1.0]), "mean": np.zeros(n), "std": np.ones(n)},
        use_embedding=False,
    )
    p = scorer.scores([PROMPT, PROMPT], ["20 x 4 = 80. #### 100", "20 x 4 = 70. 20 + 70 = 80 #### 80"])
    assert p[0] > 0.5 > p[1]

"""Shadow mode: the challenger's would-be decisions on logged calls, and their comparison."""

from __future__ import annotations

import pytest

from services.catalog import load_catalog
from services.contracts import CallEvent, prompt_hash
from services.router.calibration import Calibration, ThresholdTable
from training.evaluation.shadow import shadow_decisions, summarise

STRONG, CHEAP = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


class FakeRouter:
    """Cheap model good on 'easy' prompts, not on 'hard' ones; gap rule with threshold 0.1."""

    version = "fake-1"
    models = [STRONG, CHEAP]
    calibration = Calibration(
        models=[STRONG, CHEAP],
        strong_model=STRONG,
        global_table=ThresholdTable(
            targets=[0.0, 1.0], thresholds=[0.1, 0.1], candidates=[STRONG, CHEAP], n=10
        ),
    )

    def scores(self, queries):  # noqa: ANN001, ANN201
        return [{STRONG: 0.9, CHEAP: 0.85 if "easy" in q.prompt else 0.2} for q in queries]


def call(prompt: str, chosen: str, task: str = "t", **kw) -> CallEvent:  # noqa: ANN003
    return CallEvent(
        request_id=prompt,
        task=task,
        prompt_hash=prompt_hash(prompt),
        prompt=prompt,
        requested_model="switchyard/auto",
        mode="route",
        chosen_model=chosen,
        **kw,
    )


def test_would_be_decisions_and_agreement() -> None:
    catalog = load_catalog(None)
    calls = [
        call("easy 1", CHEAP),
        call("easy 2", STRONG),
        call("hard 1", CHEAP, task="u"),
        call("hard 2", STRONG),
        CallEvent(
            request_id="redacted", prompt_hash="0" * 16, requested_model="x", mode="route", chosen_model=CHEAP
        ),
    ]
    ds = shadow_decisions(FakeRouter(), catalog, calls, 0.95)
    assert [d.shadow_model for d in ds] == [CHEAP, CHEAP, STRONG, STRONG]  # redacted call skipped
    s = summarise(ds, STRONG)
    assert s.calls == 4 and s.agreement == pytest.approx(0.5)
    assert s.shadow_strong_share == pytest.approx(0.5) and s.served_strong_share == pytest.approx(0.5)
    assert s.per_task["u"]["agreement"] == 0.0 and s.per_task["t"]["calls"] == 3
    price = catalog.blended_price
    assert s.shadow_relative_cost == pytest.approx((2 * price(CHEAP) / price(STRONG) + 2) / 4)


def test_empty_window() -> None:
    assert summarise([], STRONG).calls == 0

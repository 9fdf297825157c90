"""Distillation: the budget is never exceeded (dollars and calls); clustering covers every cluster;
weights; the fine-tuning export is OpenAI chat JSONL; fresh labels merge into training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.catalog import load_catalog
from services.providers.base import Completion
from training.collect import apply_fresh, training_rows
from training.distill import (
    Budget,
    BudgetExceeded,
    Candidate,
    FineTuneExample,
    Labelled,
    cluster_queries,
    estimate_finetune_tokens,
    finetune_examples,
    finetune_per_task,
    label_queries,
    selection_order,
    weights,
    write_finetune_jsonl,
)

STRONG, CHEAP = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


class FakePool:
    """Stands in for ProviderPool: answers with long texts and reports the tokens it used."""

    def __init__(self, completion_tokens: int = 400) -> None:
        self.calls: list[str] = []
        self.completion_tokens = completion_tokens
        self.adapters = {"emulator-openai": self}

    def _result(self, text: str, payload: dict) -> Completion:
        out = min(self.completion_tokens, payload.get("max_tokens") or 10**9)
        tokens_in = sum(len(m["content"]) for m in payload["messages"]) // 4 + 3
        return Completion({"choices": [{"message": {"content": text}}]}, tokens_in, out)

    async def complete(self, order, payload, attempts=None):  # noqa: ANN001, ANN201
        if isinstance(payload, str):  # the judge adapter: complete(payload, model)
            payload, model = order, payload
            self.calls.append(model)
            return self._result("GRADE: 1", payload)
        self.calls.append(order[0])
        return order[0], self._result(f"answer of {order[0]}", payload)


def cands(n: int) -> list[Candidate]:
    return [Candidate(f"h{i:04d}" + "0" * 12, f"question {i} " + "x" * 200, "law") for i in range(n)]


@pytest.mark.parametrize(("usd", "calls"), [(0.05, 1000), (10.0, 7), (0.0, 100), (0.2, 3)])
async def test_budget_never_exceeded(usd: float, calls: int) -> None:
    catalog = load_catalog(None)
    pool = FakePool()
    budget = Budget(usd=usd, calls=calls)
    labelled, _ = await label_queries(
        cands(50),
        pool,
        catalog,
        budget,
        label_models=[STRONG, CHEAP],
        judge_model="switchyard/judge",
        judge_provider="emulator-openai",
        judge_price_per_m=24.7,
        max_tokens=256,
        max_queries=50,
    )
    assert budget.used_calls == len(pool.calls) <= calls
    assert budget.spent_usd <= usd + 1e-12
    # what was actually charged, recomputed from the calls made, is within the budget too
    assert budget.refused >= 1 or len(labelled) == 50


def test_budget_reserve_refuses_over_budget() -> None:
    b = Budget(usd=1.0, calls=2)
    b.reserve(0.6)
    b.settle(0.6, 0.1)
    assert b.spent_usd == pytest.approx(0.1)
    with pytest.raises(BudgetExceeded):
        b.reserve(0.95)
    b.reserve(0.5)
    with pytest.raises(BudgetExceeded):
        b.reserve(0.0)  # calls exhausted
    assert b.used_calls == 2 and b.refused == 2


async def test_labels_come_from_the_judge() -> None:
    pool = FakePool(completion_tokens=10)
    labelled, counters = await label_queries(
        cands(3),
        pool,
        load_catalog(None),
        Budget(usd=10, calls=100),
        label_models=[STRONG, CHEAP],
        judge_model="switchyard/judge",
        judge_provider="emulator-openai",
        judge_price_per_m=24.7,
        max_tokens=64,
        max_queries=3,
    )
    assert len(labelled) == 3 and all(x.labels == {STRONG: 1.0, CHEAP: 1.0} for x in labelled)
    assert pool.calls.count("switchyard/judge") == 6 and counters == {"failed": 0, "unsure": 0}


def test_clusters_are_covered_round_robin() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 10
    emb = np.concatenate([centers[i] + rng.normal(size=(10, 8)) for i in range(3)])
    cs = cands(30)
    cluster_queries(cs, emb, n_clusters=3)
    assert len({c.cluster for c in cs}) == 3
    first = selection_order(cs)[:3]
    assert len({c.cluster for c in first}) == 3  # a budget of 3 still touches every cluster


def test_weights_stand_for_the_cluster() -> None:
    cs = cands(10)
    for c in cs:
        c.cluster = 0 if int(c.prompt_hash[1:5]) < 8 else 1
    labelled = [Labelled(cs[0], {STRONG: 1.0}), Labelled(cs[9], {STRONG: 0.0})]
    w = weights(labelled, cs, base=1.0, cap=5)
    assert w[cs[0].prompt_hash] == 5  # 8 queries / 1 labelled, capped at 5
    assert w[cs[9].prompt_hash] == 2


def test_finetune_jsonl_is_openai_chat_format(tmp_path: Path) -> None:
    cs = cands(3)
    labelled = [
        Labelled(cs[0], {STRONG: 1.0}, {STRONG: "The answer is 42."}),
        Labelled(cs[1], {STRONG: 0.0}, {STRONG: "wrong"}),  # rejected by the judge: not exported
        Labelled(cs[2], {CHEAP: 1.0}, {CHEAP: "cheap"}),  # no strong answer: not exported
    ]
    path = write_finetune_jsonl(finetune_examples(labelled, STRONG), tmp_path / "ft.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert set(obj) == {"messages"}
    assert [m["role"] for m in obj["messages"]] == ["user", "assistant"]
    assert obj["messages"][0]["content"] == cs[0].prompt
    assert obj["messages"][1]["content"] == "The answer is 42."
    FineTuneExample.model_validate(obj)


def test_distillation_artefact_counts(tmp_path: Path) -> None:
    """The loop's distillation/ folder: the JSONL and a summary whose counts come from the file."""
    from training.loop.artefacts import distillation_metrics, write_distillation

    cs = cands(4)
    cs[3].task = "tax"
    labelled = [
        Labelled(cs[0], {STRONG: 1.0}, {STRONG: "The answer is 42."}),
        Labelled(cs[1], {STRONG: 1.0}, {STRONG: "B"}),
        Labelled(cs[2], {STRONG: 0.0}, {STRONG: "wrong"}),  # rejected: not exported
        Labelled(cs[3], {STRONG: 1.0}, {STRONG: "C"}),
    ]
    examples = finetune_examples(labelled, STRONG)
    ft = write_finetune_jsonl(examples, tmp_path / "stage" / "finetune-x.jsonl")
    report = {
        "finetune_path": str(ft),
        "finetune_per_task": finetune_per_task(labelled, STRONG),
        "spent_usd": 0.3,
        "calls": 12,
        "labelled_queries": 4,
    }
    folder, summary = write_distillation(
        tmp_path, report, run_id="r1", tasks=["law"], strong_model=STRONG, cheap_model=CHEAP
    )
    assert (folder / "finetune.jsonl").read_bytes() == ft.read_bytes()
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert summary["examples"] == 3 and summary["per_task"] == {"law": 2, "tax": 1}
    tokens = sum(estimate_finetune_tokens(e.model_dump()["messages"]) for e in examples)
    assert summary["tokens_estimate"] == tokens > 3 * 10  # prompts of ~210 characters
    assert summary["usd_per_example"] == pytest.approx(0.1) and summary["target_model"] == CHEAP
    m = distillation_metrics(summary)
    assert m["distillation.examples"] == 3 and m["distillation.examples.tax"] == 1
    # nothing exported (no upstream): the artefact is still there, empty, with zero counts
    _, empty = write_distillation(
        tmp_path / "b", {}, run_id="r2", tasks=[], strong_model=STRONG, cheap_model=CHEAP
    )
    assert empty["examples"] == 0 and empty["tokens_estimate"] == 0 and empty["usd_per_example"] is None


def test_fresh_labels_override_and_excluded_tasks_train_only_on_fresh() -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "dataset": "mmlu",
            "task": ["law", "law", "math"],
            "prompt": ["pa", "pb", "pc"],
            "prompt_hash": ["ha", "hb", "hc"],
            f"label:{STRONG}": [1.0, 1.0, 1.0],
            f"label:{CHEAP}": [1.0, 0.0, 1.0],
            "weight": 1,
            "source": "bootstrap",
        }
    )
    fresh = pd.DataFrame(
        [
            {
                "prompt_hash": "ha",
                "prompt": "pa",
                "task": "law",
                "model": CHEAP,
                "label": 0.0,
                "weight": 3,
                "source": "distilled",
            },
            {
                "prompt_hash": "hz",
                "prompt": "pz",
                "task": "law",
                "model": STRONG,
                "label": 1.0,
                "weight": 2,
                "source": "distilled",
            },
        ]
    )
    full = apply_fresh(frame, fresh, [STRONG, CHEAP], ["law"])
    assert full.loc[0, f"label:{CHEAP}"] == 0.0  # overridden
    assert full.loc[1, f"label:{CHEAP}"] == 0.0 and full.loc[1, "weight"] == 0  # excluded, no fresh label
    assert len(full) == 4 and full.loc[3, "prompt_hash"] == "hz"
    rows = training_rows(full, np.zeros(len(full), bool), [STRONG, CHEAP], ["law"])
    a = rows[rows["prompt_hash"] == "ha"]
    assert len(a) == 3  # weight 3 → repeated
    assert a[f"label:{STRONG}"].isna().all()  # stale benchmark label of an excluded task dropped
    assert (a[f"label:{CHEAP}"] == 0.0).all()
    assert "hb" not in set(rows["prompt_hash"])
    assert len(rows[rows["prompt_hash"] == "hz"]) == 2


async def test_unavailable_upstream_stops_distillation_early() -> None:
    from services.errors import UpstreamError

    class DownPool(FakePool):
        async def complete(self, order, payload, attempts=None):  # noqa: ANN001, ANN201
            self.calls.append("x")
            raise UpstreamError("down", upstream="emulator-openai", retryable=False)

    pool = DownPool()
    budget = Budget(usd=10, calls=1000)
    labelled, counters = await label_queries(
        cands(50),
        pool,
        load_catalog(None),
        budget,
        label_models=[STRONG, CHEAP],
        judge_model="switchyard/judge",
        judge_provider="emulator-openai",
        judge_price_per_m=24.7,
        max_tokens=64,
        max_queries=50,
        max_failures=4,
    )
    assert labelled == [] and counters["failed"] == 4 == len(pool.calls)
    assert budget.spent_usd == 0.0


def test_live_feedback_labels_only_the_drifting_tasks() -> None:
    """Outcomes grade only the chosen model (a biased sample): a targeted retrain uses those of its
    drifting tasks only, a retrain without tasks none of them."""
    from services.contracts import OutcomeEvent
    from training.collect import fresh_labels_from_outcomes

    lookup = {"h1": ("p1", "law"), "h2": ("p2", "gsm8k")}
    outs = [
        OutcomeEvent(
            request_id=r, task=t, prompt_hash=h, chosen_model=CHEAP, mode="route", score=y, accepted=y > 0.5
        )
        for r, h, t, y in (("r1", "h1", "law", 0.0), ("r2", "h2", "gsm8k", 1.0))
    ]
    assert set(fresh_labels_from_outcomes(outs, lookup)["task"]) == {"law", "gsm8k"}
    assert list(fresh_labels_from_outcomes(outs, lookup, tasks=["law"])["task"]) == ["law"]
    assert fresh_labels_from_outcomes(outs, lookup, tasks=[]).empty


def test_live_labels_of_keyed_hashes_land_on_the_benchmark_rows() -> None:
    """Events carry keyed prompt hashes (HMAC); training keys its rows by the plain hash of the
    text, and restores a redacted prompt through the key."""
    import pandas as pd

    from services.contracts import OutcomeEvent, prompt_hash
    from training.collect import fresh_labels_from_outcomes, prompt_lookup

    key = b"k" * 32
    frame = pd.DataFrame({"prompt": ["p1", "p2"], "task": ["law", "law"]})
    frame["prompt_hash"] = [prompt_hash(p) for p in frame["prompt"]]
    with_text = OutcomeEvent(
        request_id="r1", task="law", prompt_hash=prompt_hash("p1", key), prompt="p1",
        chosen_model=CHEAP, mode="route", score=0.0, accepted=False,
    )
    redacted = OutcomeEvent(
        request_id="r2", task="law", prompt_hash=prompt_hash("p2", key),
        chosen_model=CHEAP, mode="route", score=1.0, accepted=True,
    )
    rows = fresh_labels_from_outcomes([with_text, redacted], prompt_lookup(frame, key))
    assert sorted(rows["prompt_hash"]) == sorted(frame["prompt_hash"])  # the benchmark rows' ids
    assert sorted(rows["prompt"]) == ["p1", "p2"]
    # without the key, the redacted one cannot be restored (and is dropped), the other still is
    assert list(fresh_labels_from_outcomes([with_text, redacted], prompt_lookup(frame))["prompt"]) == ["p1"]

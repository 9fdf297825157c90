"""Scenario definitions and task-mix resolution of the replayer (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.replay.scenarios import SCENARIOS, Phase, Scenario, build_scenario, parse_mix, resolve_mix

SIZES = {"gsm8k": 100, "algebra": 30, "law": 10, "mbpp": 50, "winogrande": 50}
DATASET = {
    "gsm8k": "gsm8k",
    "algebra": "mmlu",
    "law": "mmlu",
    "mbpp": "routerbench",
    "winogrande": "routerbench",
}


def test_every_named_scenario_builds_with_shares_summing_to_one():
    for name in SCENARIOS:
        sc = build_scenario(name)
        assert sc.name == name and abs(sum(p.share for p in sc.phases) - 1) < 1e-9
    with pytest.raises(ValueError, match="unknown scenario"):
        build_scenario("chaos")


def test_new_task_is_absent_then_present():
    sc = build_scenario("new-task", new_task="law")
    before = resolve_mix(sc.phases[0].mix, SIZES, DATASET, sc.phases[0].exclude_tasks)
    after = resolve_mix(sc.phases[1].mix, SIZES, DATASET, sc.phases[1].exclude_tasks)
    assert "law" not in before and after["law"] > 0.3


def test_cheap_degrades_drifts_only_in_phase_two():
    sc = build_scenario("cheap-degrades", degrade_model="m", degrade_task="gsm8k")
    assert sc.phases[0].drift == ()
    assert [(a.model, a.task, a.wrong_rate) for a in sc.phases[1].drift] == [("m", "gsm8k", 1.0)]


def test_mix_shift_moves_weight_from_mmlu():
    sc = build_scenario("mix-shift")
    first, second = (resolve_mix(p.mix, SIZES, DATASET) for p in sc.phases)
    assert first["algebra"] + first["law"] > second["algebra"] + second["law"]


def test_resolve_mix_spreads_datasets_by_size_and_rejects_unknown_keys():
    mix = resolve_mix({"mmlu": 1.0, "mbpp": 1.0}, SIZES, DATASET)
    assert mix == pytest.approx({"algebra": 0.375, "law": 0.125, "mbpp": 0.5})
    assert resolve_mix({"gsm8k": 1.0}, SIZES, DATASET) == {"gsm8k": 1.0}
    with pytest.raises(ValueError, match="neither"):
        resolve_mix({"nope": 1.0}, SIZES, DATASET)
    with pytest.raises(ValueError, match="no prompts"):
        resolve_mix({"law": 1.0}, SIZES, DATASET, exclude=("law",))


def test_parse_mix_and_phase_counts():
    assert parse_mix("gsm8k=2, mmlu") == {"gsm8k": 2.0, "mmlu": 1.0}
    with pytest.raises(ValueError):
        parse_mix("gsm8k=lots")
    assert build_scenario("mix-shift").phase_counts(7) == [3, 4]


def test_invalid_scenarios_are_rejected():
    with pytest.raises(ValidationError, match="sum"):
        Scenario(name="x", description="", phases=(Phase(name="a", share=0.5, mix={"gsm8k": 1}),))
    with pytest.raises(ValidationError, match="positive sum"):
        Phase(name="a", share=1.0, mix={"gsm8k": 0})

"""Benchmark loaders on the real data directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.data import (
    GPT4,
    MIXTRAL,
    ROUTERBENCH_MODELS,
    DataNotFoundError,
    load_all,
    load_gsm8k,
    load_mmlu,
    load_routerbench,
)


def test_mmlu_tasks_labels_and_decontamination(data_dir: Path) -> None:
    bench = load_mmlu(data_dir)
    files = list((data_dir / "routellm" / "mmlu").glob("mmlu_*.csv"))
    assert len(bench.tasks) == len(files)
    assert set(bench.models) == {GPT4, MIXTRAL}
    labels = bench.labels()
    assert set(np.unique(labels.values)) <= {0.0, 1.0}
    contaminated = {
        json.loads(line)["eval_prompt"].strip()
        for line in (data_dir / "routellm" / "mmlu" / "contaminated_prompts.jsonl").read_text().splitlines()
        if line.strip()
    }
    assert not set(bench.frame["prompt"].str.strip()) & contaminated
    # The README's reference: GPT-4 ~80%, Mixtral ~68-70% on the local subset.
    assert 0.75 < labels[GPT4].mean() < 0.85
    assert 0.62 < labels[MIXTRAL].mean() < 0.75
    assert bench.frame["id"].is_unique


def test_gsm8k_has_answer_text(data_dir: Path) -> None:
    bench = load_gsm8k(data_dir)
    assert bench.tasks == ["gsm8k"]
    assert bench.responses(GPT4).notna().mean() > 0.99
    assert 0.80 < bench.labels()[GPT4].mean() < 0.90


def test_routerbench_parses_lists_and_costs(data_dir: Path) -> None:
    bench = load_routerbench(data_dir)
    assert set(bench.models) == set(ROUTERBENCH_MODELS)
    assert not bench.frame["prompt"].str.startswith("['").any()
    costs = bench.costs()
    assert (costs.fillna(0) >= 0).all().all()
    assert costs[GPT4].mean() > 10 * costs["mistralai/mistral-7b-chat"].mean()
    assert bench.responses(GPT4).notna().mean() > 0.9


def test_load_all_masks_models_not_graded(data_dir: Path) -> None:
    bench = load_all(data_dir)
    labels = bench.labels()
    mmlu = bench.frame["dataset"] == "mmlu"
    assert labels.loc[mmlu, "claude-v2"].isna().all()
    assert labels.loc[~mmlu & (bench.frame["dataset"] == "routerbench"), MIXTRAL].isna().all()


def test_loaders_take_whatever_is_present(tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "routellm" / "mmlu").mkdir(parents=True)
    shutil.copy(data_dir / "routellm" / "mmlu" / "mmlu_anatomy.csv", tmp_path / "routellm" / "mmlu")
    bench = load_all(tmp_path)
    assert bench.tasks == ["anatomy"]
    with pytest.raises(DataNotFoundError, match="make data"):
        load_gsm8k(tmp_path)
    with pytest.raises(DataNotFoundError, match="SWITCHYARD_DATA_DIR"):
        load_all(tmp_path / "empty")

"""Splits are deterministic and group-safe (no prompt straddles train and test)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.contracts import prompt_hash
from training.data import load_mmlu
from training.splits import kfold, leave_tasks_out, train_mask


def test_kfold_is_deterministic_and_groups_duplicates() -> None:
    prompts = [f"q{i % 300}" for i in range(1000)]  # every prompt appears 3-4 times
    hashes = [prompt_hash(p) for p in prompts]
    a, b = kfold(hashes, 5), kfold(hashes, 5)
    assert (a == b).all()
    assert set(a) == set(range(5))
    by_hash = pd.Series(a).groupby(pd.Series(hashes)).nunique()
    assert (by_hash == 1).all()
    assert (kfold(hashes, 5, seed=1) != a).any()


def test_train_mask_drops_prompts_shared_with_test() -> None:
    hashes = pd.Series(["h1", "h2", "h1", "h3"])
    test = np.array([True, False, False, False])
    assert train_mask(hashes, test).tolist() == [False, True, False, True]


def test_leave_tasks_out_on_real_mmlu(data_dir) -> None:
    frame = load_mmlu(data_dir).frame
    groups = leave_tasks_out(frame, n_groups=5)
    held = [t for _, tasks, _, _ in groups for t in tasks]
    assert sorted(held) == sorted(frame["task"].unique())  # every subject held out exactly once
    for _, tasks, train, test in groups:
        assert set(frame.loc[test, "task"]) == set(tasks)
        assert not set(frame.loc[train, "task"]) & set(tasks)
        assert not set(frame.loc[train, "prompt_hash"]) & set(frame.loc[test, "prompt_hash"])

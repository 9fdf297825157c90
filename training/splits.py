"""Deterministic, group-safe splits.

Rows are assigned to folds by a hash of their prompt hash, so duplicate prompts (within or across
datasets) always land in the same fold and never straddle train and test. The leave-tasks-out
split holds out whole MMLU subjects (in groups); rows of other datasets whose prompt also occurs in
a held-out subject are dropped from training too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd


def _bucket(key: str, n: int, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") % n


def kfold(prompt_hashes: Sequence[str], k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id (0..k-1) per row, a pure function of the prompt hash (group-safe, deterministic)."""
    if k < 2:
        raise ValueError("k must be at least 2")
    return np.array([_bucket(h, k, seed) for h in prompt_hashes], dtype=int)


def train_mask(prompt_hashes: pd.Series, test: np.ndarray) -> np.ndarray:
    """Rows usable for training given the test rows: not test, and no prompt shared with a test row."""
    test = np.asarray(test, dtype=bool)
    held = set(prompt_hashes[test])
    return ~test & ~prompt_hashes.isin(held).to_numpy()


def task_groups(tasks: Sequence[str], n_groups: int = 5, seed: int = 0) -> dict[str, int]:
    """Assign whole tasks to ``n_groups`` groups: deterministic, balanced in task count."""
    uniq = sorted(set(tasks), key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    return {t: i % n_groups for i, t in enumerate(uniq)}


def leave_tasks_out(
    frame: pd.DataFrame, *, dataset: str = "mmlu", n_groups: int = 5, seed: int = 0
) -> list[tuple[str, list[str], np.ndarray, np.ndarray]]:
    """``[(group name, held-out tasks, train mask, test mask)]``: each group's tasks held out whole."""
    in_ds = (frame["dataset"] == dataset).to_numpy()
    groups = task_groups(frame.loc[in_ds, "task"].tolist(), n_groups, seed)
    out = []
    for g in range(n_groups):
        tasks = sorted(t for t, i in groups.items() if i == g)
        test = in_ds & frame["task"].isin(tasks).to_numpy()
        out.append((f"group{g}", tasks, train_mask(frame["prompt_hash"], test), test))
    return out


def task_folds(tasks: Sequence[str], k: int = 5, seed: int = 0) -> np.ndarray:
    """Grouped (leave-tasks-out) fold id per row: every task of every dataset lies whole in one
    fold, so no task is in both train and test. Combine with :func:`train_mask` to also drop
    training rows whose prompt occurs in the test fold."""
    if k < 2:
        raise ValueError("k must be at least 2")
    groups = task_groups(tasks, k, seed)
    return np.array([groups[t] for t in tasks], dtype=int)

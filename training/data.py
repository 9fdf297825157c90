"""Benchmark datasets: real graded answers of real LLMs, read from ``SWITCHYARD_DATA_DIR``.

Loaders take whatever files are present (the local MMLU copy is a subset). Every loader returns a
:class:`Benchmark`: one row per prompt with its task, and per model the correctness label
(``label:<model>``, 0..1, NaN where that model was not graded), the answer text where recorded
(``response:<model>``) and the real per-call cost where recorded (``cost:<model>``).
Contaminated prompts (listed upstream) are dropped, as RouteLLM does before evaluation.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from services.contracts import prompt_hash

log = logging.getLogger(__name__)

GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_MODELS = (GPT4, MIXTRAL)
ROUTERBENCH_TASKS = ("arc_challenge", "mbpp", "winograde")
ROUTERBENCH_MODELS = (
    "gpt-4-1106-preview",
    "gpt-3.5-turbo-1106",
    "claude-v2",
    "claude-v1",
    "claude-instant-v1",
    "meta/llama-2-70b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
    "meta/code-llama-instruct-34b-chat",
    "WizardLM/WizardLM-13B-V1.2",
    "mistralai/mistral-7b-chat",
)

LABEL, RESPONSE, COST = "label:", "response:", "cost:"


class DataNotFoundError(FileNotFoundError):
    """The data directory lacks the files a loader needs."""


@dataclass(frozen=True)
class Benchmark:
    """A table of prompts with per-model labels (and answers and costs where recorded)."""

    frame: pd.DataFrame

    @property
    def models(self) -> list[str]:
        return [c[len(LABEL) :] for c in self.frame.columns if c.startswith(LABEL)]

    def labels(self, models: Iterable[str] | None = None) -> pd.DataFrame:
        models = list(models) if models is not None else self.models
        return self.frame[[LABEL + m for m in models]].set_axis(models, axis=1)

    def responses(self, model: str) -> pd.Series:
        col = RESPONSE + model
        if col not in self.frame:
            return pd.Series([None] * len(self.frame), index=self.frame.index, dtype=object)
        return self.frame[col]

    def costs(self, models: Iterable[str] | None = None) -> pd.DataFrame:
        models = list(models) if models is not None else self.models
        cols = {m: self.frame[COST + m] if COST + m in self.frame else np.nan for m in models}
        return pd.DataFrame(cols, index=self.frame.index)

    @property
    def tasks(self) -> list[str]:
        return sorted(self.frame["task"].unique())

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, mask: pd.Series | np.ndarray) -> Benchmark:
        return Benchmark(self.frame[np.asarray(mask)].reset_index(drop=True))

    def where_task(self, tasks: Iterable[str]) -> Benchmark:
        return self.subset(self.frame["task"].isin(list(tasks)))


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    frame["prompt_hash"] = [prompt_hash(p) for p in frame["prompt"]]
    base = ["id", "dataset", "task", "prompt", "prompt_hash"]
    rest = sorted(c for c in frame.columns if c not in base)
    return frame[base + rest].reset_index(drop=True)


def _contaminated(path: Path) -> set[str]:
    if not path.exists():
        return set()
    out = set()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.add(json.loads(line)["eval_prompt"].strip())
    return out


def load_mmlu(data_dir: Path, drop_contaminated: bool = True) -> Benchmark:
    """RouteLLM MMLU answers, two tiers; the subject is the task. Reads every subject present."""
    root = Path(data_dir) / "routellm" / "mmlu"
    files = sorted(root.glob("mmlu_*.csv"))
    if not files:
        raise DataNotFoundError(f"no MMLU files (mmlu_<subject>.csv) under {root}; run `make data`")
    skip = _contaminated(root / "contaminated_prompts.jsonl") if drop_contaminated else set()
    parts = []
    for f in files:
        subject = f.stem[len("mmlu_") :]
        df = pd.read_csv(f)
        df = df[~df["prompt"].str.strip().isin(skip)]
        parts.append(
            pd.DataFrame(
                {
                    "id": [f"mmlu/{subject}/{i}" for i in df.index],
                    "dataset": "mmlu",
                    "task": subject,
                    "prompt": df["prompt"].astype(str).values,
                    **{LABEL + m: df[m].astype(float).values for m in ROUTELLM_MODELS},
                }
            )
        )
    return Benchmark(_finish(pd.concat(parts, ignore_index=True)))


def load_gsm8k(data_dir: Path, drop_contaminated: bool = True) -> Benchmark:
    """RouteLLM GSM8K answers (two tiers, with the full answer text of both models)."""
    root = Path(data_dir) / "routellm" / "gsm8k"
    path = root / "gsm8k_responses.csv"
    if not path.exists():
        raise DataNotFoundError(f"missing {path}; run `make data`")
    skip = _contaminated(root / "contaminated_prompts.jsonl") if drop_contaminated else set()
    df = pd.read_csv(path)
    df = df[~df["prompt"].str.strip().isin(skip)]
    frame = pd.DataFrame(
        {
            "id": [f"gsm8k/{i}" for i in df.index],
            "dataset": "gsm8k",
            "task": "gsm8k",
            "prompt": df["prompt"].astype(str).values,
            **{LABEL + m: df[m].astype(float).values for m in ROUTELLM_MODELS},
            **{RESPONSE + m: df[f"{m}_response"].astype(object).values for m in ROUTELLM_MODELS},
        }
    )
    return Benchmark(_finish(frame))


def _unlist(text: object) -> str | None:
    """RouterBench stores prompts and answers as a printed one-element Python list."""
    if not isinstance(text, str):
        return None
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            value = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return s
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
    return s


def load_routerbench(data_dir: Path, splits: Iterable[str] = ("train", "test")) -> Benchmark:
    """RouterBench zero-shot split: 11 models with answers and real per-call costs."""
    root = Path(data_dir) / "routerbench"
    parts = []
    for task in ROUTERBENCH_TASKS:
        for split in splits:
            path = root / f"{task}_{split}.csv"
            if not path.exists():
                continue
            df = pd.read_csv(path)
            models = [m for m in ROUTERBENCH_MODELS if m in df.columns]
            cols: dict[str, object] = {
                "id": [f"routerbench/{s}" for s in df["sample_id"]],
                "dataset": "routerbench",
                "task": df["eval_name"].astype(str).values,
                "prompt": [_unlist(p) or "" for p in df["prompt"]],
                "upstream_split": split,
            }
            for m in models:
                cols[LABEL + m] = df[m].astype(float).values
                if f"{m}|model_response" in df:
                    cols[RESPONSE + m] = [_unlist(r) for r in df[f"{m}|model_response"]]
                if f"{m}|total_cost" in df:
                    cols[COST + m] = df[f"{m}|total_cost"].astype(float).values
            parts.append(pd.DataFrame(cols))
    if not parts:
        raise DataNotFoundError(
            f"no RouterBench files ({{task}}_{{split}}.csv) under {root}; run `make data`"
        )
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.drop_duplicates("id")
    return Benchmark(_finish(frame))


LOADERS = {"mmlu": load_mmlu, "gsm8k": load_gsm8k, "routerbench": load_routerbench}
DATASETS = tuple(LOADERS)


def check_datasets(datasets: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the datasets no loader knows."""
    unknown = [d for d in datasets if d not in LOADERS]
    if unknown:
        raise ValueError(f"unknown datasets {unknown} (known: {list(LOADERS)})")


def labels_last(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``label:`` columns moved to the end (several benchmarks concatenated)."""
    label_cols = [c for c in frame.columns if c.startswith(LABEL)]
    return frame[[c for c in frame.columns if not c.startswith(LABEL)] + label_cols].reset_index(drop=True)


def load_benchmark(
    data_dir: Path, datasets: Iterable[str], max_rows: int | None = None, seed: int = 0
) -> Benchmark:
    """The chosen datasets in one table (optionally a deterministic per-dataset subsample)."""
    datasets = list(datasets)
    check_datasets(datasets)
    frames = [LOADERS[d](data_dir).frame for d in datasets]
    if max_rows:
        frames = [f.sample(n=min(len(f), max_rows), random_state=seed) for f in frames]
    return Benchmark(labels_last(pd.concat(frames, ignore_index=True)))


def load_all(data_dir: Path) -> Benchmark:
    """Every benchmark present, in one table (labels NaN where a model was not graded)."""
    loaders = (load_mmlu, load_gsm8k, load_routerbench)
    parts = []
    for loader in loaders:
        try:
            parts.append(loader(data_dir).frame)
        except DataNotFoundError as exc:
            log.warning("skipping: %s", exc)
    if not parts:
        raise DataNotFoundError(
            f"no benchmark files under {data_dir}; set SWITCHYARD_DATA_DIR or run `make data`"
        )
    return Benchmark(_finish(pd.concat(parts, ignore_index=True).drop(columns=["prompt_hash"])))

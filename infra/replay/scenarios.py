"""Named, reproducible traffic scenarios: phases with a task mix and actions at phase start.

A mix maps a task name (``gsm8k``, ``mbpp``, an MMLU subject) or a dataset name (``mmlu``,
``gsm8k``, ``routerbench``) to a weight; a dataset key spreads its weight over its tasks by
prompt count. Scenarios:

* ``steady``: one phase, the given mix (default: the three datasets equally).
* ``new-task``: phase 1 never sends the held-out MMLU subject; phase 2 sends it at a large share
  (train the router without that subject for it to be truly unseen).
* ``mix-shift``: MMLU-heavy, then GSM8K/RouterBench-heavy.
* ``cheap-degrades``: the same mix throughout; at phase 2 the emulator makes a cheap model answer
  one task wrongly (``POST /emulator/drift``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

KNOWN_DATASETS = ("mmlu", "gsm8k", "routerbench")
DEFAULT_MIX = {"mmlu": 1.0, "gsm8k": 1.0, "routerbench": 1.0}
DEFAULT_NEW_TASK = "professional_law"
DEFAULT_DEGRADE_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DEFAULT_DEGRADE_TASK = "gsm8k"


class DriftAction(BaseModel):
    """Make ``model`` answer ``task`` wrongly from the start of the phase (emulator admin call)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    task: str
    wrong_rate: float = Field(default=1.0, ge=0, le=1)


class Phase(BaseModel):
    """A slice of the run: its share of the requests (or of the duration) and its task mix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    share: float = Field(gt=0, le=1)
    mix: dict[str, float]
    exclude_tasks: tuple[str, ...] = ()
    drift: tuple[DriftAction, ...] = ()

    @model_validator(mode="after")
    def _weights(self) -> Phase:
        if not self.mix or any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"phase {self.name!r}: mix weights must be >= 0 with a positive sum")
        return self


class Scenario(BaseModel):
    """A named sequence of phases whose shares sum to 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    phases: tuple[Phase, ...]

    @model_validator(mode="after")
    def _shares(self) -> Scenario:
        total = sum(p.share for p in self.phases)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"scenario {self.name!r}: phase shares sum to {total}, not 1")
        return self

    def phase_counts(self, count: int) -> list[int]:
        """Requests per phase for a run of ``count`` requests (sums to ``count``)."""
        counts = [int(p.share * count) for p in self.phases]
        counts[-1] += count - sum(counts)
        return counts


SCENARIOS = ("steady", "new-task", "mix-shift", "cheap-degrades")


def build_scenario(
    name: str,
    mix: dict[str, float] | None = None,
    *,
    new_task: str = DEFAULT_NEW_TASK,
    degrade_model: str = DEFAULT_DEGRADE_MODEL,
    degrade_task: str = DEFAULT_DEGRADE_TASK,
) -> Scenario:
    """The named scenario (see the module docstring); ``mix`` overrides the base mix."""
    base = dict(mix or DEFAULT_MIX)
    if name == "steady":
        return Scenario(
            name=name,
            description="one phase, a fixed task mix",
            phases=(Phase(name="steady", share=1.0, mix=base),),
        )
    if name == "new-task":
        return Scenario(
            name=name,
            description=f"MMLU subject {new_task!r} is absent, then makes up ~40-45% of traffic",
            phases=(
                Phase(name="before", share=0.5, mix=base, exclude_tasks=(new_task,)),
                Phase(
                    name="new-task",
                    share=0.5,
                    mix={**base, new_task: sum(base.values()) * 2 / 3},
                    exclude_tasks=(),
                ),
            ),
        )
    if name == "mix-shift":
        return Scenario(
            name=name,
            description="MMLU-heavy traffic shifts to GSM8K/RouterBench-heavy traffic",
            phases=(
                Phase(name="mmlu-heavy", share=0.5, mix={"mmlu": 0.7, "gsm8k": 0.15, "routerbench": 0.15}),
                Phase(
                    name="reasoning-heavy", share=0.5, mix={"mmlu": 0.15, "gsm8k": 0.5, "routerbench": 0.35}
                ),
            ),
        )
    if name == "cheap-degrades":
        return Scenario(
            name=name,
            description=f"{degrade_model} starts answering {degrade_task!r} wrongly halfway through",
            phases=(
                Phase(name="healthy", share=0.5, mix=base),
                Phase(
                    name="degraded",
                    share=0.5,
                    mix=base,
                    drift=(DriftAction(model=degrade_model, task=degrade_task),),
                ),
            ),
        )
    raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")


def parse_mix(text: str) -> dict[str, float]:
    """``"gsm8k=2,mmlu=1"`` → ``{"gsm8k": 2.0, "mmlu": 1.0}`` (a bare name weighs 1)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, weight = part.partition("=")
        try:
            out[key.strip()] = float(weight) if weight else 1.0
        except ValueError as exc:
            raise ValueError(f"bad mix entry {part!r}: weight must be a number") from exc
    if not out:
        raise ValueError("empty mix")
    return out


def resolve_mix(
    mix: dict[str, float],
    task_sizes: dict[str, int],
    task_dataset: dict[str, str],
    exclude: tuple[str, ...] = (),
) -> dict[str, float]:
    """Task → probability: dataset keys spread over their tasks by prompt count.

    A known dataset that is not loaded is skipped; any other unknown key is an error.
    """
    out: dict[str, float] = {}
    datasets = set(task_dataset.values())
    for key, weight in mix.items():
        if key in task_sizes and key not in datasets:
            tasks = [key]
        elif key in datasets:
            tasks = [t for t, d in task_dataset.items() if d == key]
        elif key in task_sizes:
            tasks = [key]
        elif key in KNOWN_DATASETS:
            continue  # a dataset not loaded here (e.g. a default mix on a partial corpus)
        else:
            raise ValueError(f"mix key {key!r} is neither a task nor a dataset in the data")
        tasks = [t for t in tasks if t not in exclude]
        size = sum(task_sizes[t] for t in tasks)
        for t in tasks:
            out[t] = out.get(t, 0.0) + weight * task_sizes[t] / size
    total = sum(out.values())
    if total <= 0:
        raise ValueError(f"mix {mix} selects no prompts")
    return {t: w / total for t, w in sorted(out.items())}

"""The closed loop's run state: one :class:`RunState` per run, persisted by :class:`RunStore`.

``<state_dir>/loop/runs/<run_id>/state.json`` is written atomically after every stage, with the
stage's outputs beside it; ``<state_dir>/loop/requests.json`` maps each ``retrain_id`` to the run
that serves it (what makes a redelivered request a no-op).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class RunStatus(StrEnum):
    PENDING = "pending"
    COLLECTED = "collected"
    DISTILLED = "distilled"
    TRAINED = "trained"
    GATED = "gated"
    DONE = "done"
    FAILED = "failed"


ORDER = [
    RunStatus.PENDING,
    RunStatus.COLLECTED,
    RunStatus.DISTILLED,
    RunStatus.TRAINED,
    RunStatus.GATED,
    RunStatus.DONE,
]
TERMINAL = {RunStatus.DONE, RunStatus.FAILED}


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunState(BaseModel):
    """One run of the loop, persisted after every stage."""

    run_id: str
    created: datetime = Field(default_factory=utcnow)
    updated: datetime = Field(default_factory=utcnow)
    status: RunStatus = RunStatus.PENDING
    reasons: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list, description="Drifting tasks ([] = none named).")
    request_ids: list[str] = Field(default_factory=list)
    requested_at: list[datetime] = Field(default_factory=list)
    window_start: datetime | None = None
    window_end: datetime | None = None
    collected_at: datetime | None = None
    attempts: int = 0
    collect: dict[str, Any] = Field(default_factory=dict)
    distill: dict[str, Any] = Field(default_factory=dict)
    router_dir: str | None = None
    router_version: str | None = None
    champion_version: str | None = Field(default=None, description="Registered version that was champion.")
    mlflow_run_id: str | None = None
    model_version: str | None = None
    verdict: dict[str, Any] | None = None
    promoted: bool = False
    redeploy: dict[str, Any] | None = None
    error: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def reached(self, status: RunStatus) -> bool:
        """Whether the run completed ``status`` (stages are ordered)."""
        if self.status == RunStatus.FAILED:
            return False
        return ORDER.index(self.status) >= ORDER.index(status)


class RunStore:
    """Run states and the request → run index under one directory (atomic JSON writes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.index_path = self.root / "requests.json"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def save(self, state: RunState) -> None:
        state.updated = utcnow()
        self._write(self.run_dir(state.run_id) / "state.json", state.model_dump_json(indent=1))

    def load(self, run_id: str) -> RunState | None:
        p = self.run_dir(run_id) / "state.json"
        return RunState.model_validate_json(p.read_text(encoding="utf-8")) if p.exists() else None

    def all(self) -> list[RunState]:
        if not self.runs.exists():
            return []
        out = [self.load(p.name) for p in sorted(self.runs.iterdir()) if (p / "state.json").exists()]
        return sorted([s for s in out if s is not None], key=lambda s: s.created)

    def index(self) -> dict[str, str]:
        if not self.index_path.exists():
            return {}
        return json.loads(self.index_path.read_text(encoding="utf-8"))

    def remember(self, request_ids: list[str], run_id: str) -> None:
        idx = self.index()
        idx.update({r: run_id for r in request_ids})
        self._write(self.index_path, json.dumps(idx, indent=1))


def run_id_for(request_ids: list[str]) -> str:
    """Deterministic id of a run created for these requests (a replay finds the same run)."""
    return "run-" + hashlib.sha256("\n".join(sorted(request_ids)).encode()).hexdigest()[:12]

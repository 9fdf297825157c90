"""The scoring contract's line shapes (``switchyard router score``), kept stable for outside evaluation.

Input lines ``{"id": str, "prompt": str, "task": str | null}``; output lines
``{"id": str, "scores": {"<model id>": float, ...}, "router_version": str}``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ScoreInput(BaseModel):
    """One input line. Unknown extra keys are ignored; id and a non-blank prompt are required."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    prompt: str
    task: str | None = None

    @field_validator("prompt")
    @classmethod
    def _non_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be empty")
        return v


class ScoreOutput(BaseModel):
    """One output line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    scores: dict[str, float]
    router_version: str

"""What a replay run is: :class:`ReplayConfig` (what to send) and :class:`Result` (one request's
outcome). The runner produces results from a config; the summary reads both."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReplayConfig(BaseModel):
    """One replay run."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="OpenAI-style base URL, e.g. http://127.0.0.1:8000/v1.")
    api_key: str = "switchyard-replay"
    model: str = Field(default="switchyard/auto", description="Model sent in each request.")
    emulator_url: str | None = Field(
        default="http://127.0.0.1:8100", description="For ground truth and drift."
    )
    count: int | None = Field(default=200, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=8, ge=1, le=1024)
    rate: float | None = Field(
        default=None, gt=0, description="Requests started per second (None: as fast as possible)."
    )
    stream: bool = False
    feedback_share: float = Field(default=0.2, ge=0, le=1)
    feedback_source: str = "user"
    seed: int = 0
    near_duplicates: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of requests that are near-duplicates of earlier ones (infra/replay/paraphrase.py: "
        "repeats, rewordings, and traps whose right answer changes).",
    )
    cache: bool = Field(default=True, description="False: every request opts out of the semantic cache.")
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _bound(self) -> ReplayConfig:
        if self.duration_s is not None:
            self.count = None
        if self.count is None and self.duration_s is None:
            raise ValueError("set count or duration_s: a replay is always bounded")
        return self


@dataclass
class Result:
    """One request's outcome.

    ``started_at`` and ``finished_at`` are wall-clock times (``time.time()``): when the request
    was sent and when its handling (answer, truth lookup, feedback) was over.
    """

    phase: str
    task: str
    prompt_hash: str
    ok: bool
    error: str | None
    model: str | None
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    correct: float | None
    baseline_cost_usd: float
    baseline_correct: float | None
    request_id: str | None = None
    feedback: str | None = None  # "sent" | "failed" | None
    variant: str = "fresh"  # a near-duplicate's kind (infra/replay/paraphrase.py), else "fresh"
    cache_hit: bool = False
    # a hit whose answer is worse than a fresh one would be: a trap (the right answer changed), an
    # answer to another question, or one graded below the fresh answer of its model
    false_hit: bool | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

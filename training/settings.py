"""The training area's settings, one class: where its files live and the closed loop's knobs.

``SWITCHYARD_TRAIN_*`` (budget, margins, window, schedule, the loop's training run), plus the
project-wide ``SWITCHYARD_STATE_DIR`` (caches, router artefacts, run state) and
``SWITCHYARD_REPORTS_DIR``. Built in entrypoints (``switchyard train ...``), never at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .evaluation.gate import GateConfig

PATHS = frozenset({"state_dir", "reports_dir"})


class TrainSettings(BaseSettings):
    """Everything training needs besides the Kafka/MLflow/data settings."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_TRAIN_", env_file=None, extra="ignore", populate_by_name=True
    )

    # where things are (the project's state dir, shared with the other areas)
    state_dir: Path = Field(
        default=Path(".state"),
        validation_alias="SWITCHYARD_STATE_DIR",
        description="The project's state directory (embedding cache, routers, loop runs).",
    )
    reports_dir: Path = Field(
        default=Path("reports/router"),
        validation_alias="SWITCHYARD_REPORTS_DIR",
        description="Default output of `train eval routers`.",
    )

    # collect
    datasets: list[str] = Field(
        default_factory=lambda: ["mmlu", "gsm8k", "routerbench"],
        description="Benchmark datasets of the bootstrap rows (default: mmlu, gsm8k, routerbench).",
    )
    max_rows: int | None = Field(default=400, ge=1, description="Bootstrap rows per dataset (None: all).")
    exclude_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks left out of the bootstrap training rows (e.g. a task that appears later).",
    )
    window_s: float = Field(default=3600.0, gt=0, description="Default look-back for outcomes/hard queries.")
    max_age_s: float = Field(
        default=7 * 86400.0, gt=0, description="Never use Kafka records older than this."
    )
    max_records: int = Field(
        default=20000, ge=1, description="At most this many records per topic (newest kept)."
    )
    holdout_rows: int = Field(
        default=400,
        ge=0,
        description="Extra held-out rows per dataset beyond the training subsample (for the gate).",
    )
    holdout_folds: int = Field(
        default=5, ge=2, description="Held-out split = fold 0 of this many (by prompt hash)."
    )
    # distillation
    budget_usd: float = Field(default=1.0, ge=0, description="Distillation spend cap per run (USD).")
    budget_calls: int = Field(default=200, ge=0, description="Distillation upstream-call cap per run.")
    clusters: int = Field(
        default=8, ge=1, description="KMeans clusters of the hard queries (at most one per query)."
    )
    max_queries: int = Field(default=60, ge=0, description="Hard queries to label per run at most.")
    label_models: list[str] = Field(
        default_factory=lambda: ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"],
        description="Models whose answers are obtained and judged per distilled query.",
    )
    cheap_model: str = Field(
        default="mistralai/Mixtral-8x7B-Instruct-v0.1", description="Fine-tuning export target."
    )
    catalog: Path | None = Field(
        default=None, description="Catalog YAML for the providers (default: built-in)."
    )
    judge_model: str = Field(default="switchyard/judge", description="Model that judges the label answers.")
    judge_provider: str = Field(
        default="emulator-openai", description="Catalog provider whose adapter calls the judge."
    )
    judge_price_per_m: float = Field(
        default=24.7, ge=0, description="USD per 1M judge tokens (for the budget)."
    )
    max_tokens: int = Field(default=512, ge=1, description="Completion cap per distillation call.")
    distill_weight: float = Field(default=3.0, ge=0, description="Base weight of a distilled label.")
    max_weight: int = Field(default=8, ge=1, description="Cap of a distilled label's weight.")
    # training
    kind: str = Field(default="mlp", description="Router head of the challenger: random, knn, mf or mlp.")
    epochs: int = Field(default=15, ge=1, description="Training epochs of a head.")
    ensemble: int = Field(
        default=5,
        ge=1,
        le=16,
        description="mlp heads averaged per router (run-to-run variance of the policy falls with it).",
    )
    warm_start: bool = Field(
        default=False,
        description="Start the challenger's final fit from the champion's head (docs/closed-loop.md: "
        "measured worse than a cold start in the demo).",
    )
    warm_epochs: int = Field(default=3, ge=1, description="Epochs of a warm-started challenger's final fit.")
    calibration_folds: int = Field(
        default=3,
        ge=2,
        description="Out-of-fold splits (by prompt hash) that the per-task calibration is fitted on.",
    )
    cold_folds: int = Field(
        default=5,
        ge=2,
        description="Leave-tasks-out folds of the cold-start calibration (unseen tasks); fewer than "
        "`train router`'s 10 to keep alert -> serving short.",
    )
    cold_start_coverage: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Cold-start table: share of held-out tasks that must each keep the target.",
    )
    encoder_backend: str = Field(
        default="torch",
        pattern="^(torch|onnx|static)$",
        description="Encoder backend of the first router (torch, onnx or static; no champion yet); "
        "later runs reuse the champion's.",
    )
    encoder_int8: bool = Field(default=False, description="int8 encoder for the first router.")
    encoder_max_length: int = Field(
        default=128,
        ge=8,
        le=512,
        description="Encoder tokens per prompt for the first router (head and tail kept).",
    )
    # gate
    quality_target: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Share of the strong model's quality the policy keeps (gated at it).",
    )
    task_margin: float = Field(default=0.03, ge=0, description="Allowed per-task quality_ratio drop.")
    task_margins: dict[str, float] = Field(
        default_factory=dict, description="Per-task overrides of the task margin (JSON {task: margin})."
    )
    repair_margin: float = Field(
        default=0.05, ge=0, description="A drifting task must reach the quality target minus this."
    )
    overall_margin: float = Field(default=0.01, ge=0, description="Allowed overall quality_ratio drop.")
    stable_margin: float = Field(
        default=0.02, ge=0, description="Allowed quality_ratio drop on the non-drifting tasks together."
    )
    gate_alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Significance of a quality drop.")
    apgr_margin: float = Field(default=0.05, ge=0, description="Allowed APGR drop (strong vs cheap ranking).")
    cost_margin: float = Field(
        default=0.25, ge=0, description="Allowed relative cost rise per request on the non-drifting tasks."
    )
    ece_margin: float = Field(
        default=0.03, ge=0, description="Allowed rise of the expected calibration error (ECE)."
    )
    min_task_rows: int = Field(
        default=60, ge=1, description="Tasks with fewer held-out rows are gated together per dataset."
    )
    first_min_quality: float = Field(
        default=0.85, ge=0, le=1, description="Gate for the first model (no champion)."
    )
    overdelivery_margin: float = Field(
        default=0.15,
        ge=0,
        description="Over-delivery: on a non-drifting task where the champion already meets the "
        "quality target, the challenger may not raise the cost ratio (share of the strong model's "
        "price per request) by more than this, significantly, without a significant quality gain.",
    )
    require_gain: bool = Field(
        default=True,
        description="The gate also needs a gain: the challenger significantly cheaper or better on "
        "some task, dataset group or overall, or a drifting task repaired.",
    )
    # promotion and worker
    auto_promote: bool = Field(default=True, description="Move champion when the gate passes.")
    gateway_url: str | None = Field(
        default=None,
        description="After a promotion, wait until the gateway at this base URL reports serving the "
        "new version in /readyz (its replicas follow the alias by themselves); unset: only move the "
        "alias.",
    )
    serving_timeout_s: float = Field(
        default=180.0, gt=0, description="How long to wait for the gateway to report the new version."
    )
    coalesce_s: float = Field(
        default=5.0, ge=0, description="Wait this long after a request for more to merge."
    )
    schedule_s: float | None = Field(default=None, gt=0, description="Also retrain every this many seconds.")
    group_id: str = Field(
        default="switchyard-retrain",
        description="Consumer group of the retrain worker (after the topic prefix).",
    )

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache" / "embeddings"

    @property
    def routers_dir(self) -> Path:
        return self.state_dir / "routers"

    @property
    def loop_dir(self) -> Path:
        """Run state of the closed loop (``switchyard train status`` reads it)."""
        return self.state_dir / "loop"

    def loop_params(self) -> dict:
        """The loop's knobs as logged with a run (MLflow params; the paths are left out)."""
        return self.model_dump(mode="json", exclude=set(PATHS))

    def gate_config(self) -> GateConfig:
        """The gate's margins (fields of the same name; ``gate_alpha`` is the gate's ``alpha``)."""
        fields = set(GateConfig.model_fields) - {"alpha", "bootstrap"}
        return GateConfig(alpha=self.gate_alpha, **self.model_dump(include=fields))

    def train_config(self):  # noqa: ANN201 - TrainConfig (torch-free import kept lazy)
        """The challenger's training hyper-parameters."""
        from .train import TrainConfig

        return TrainConfig(**self.model_dump(include=TRAIN_FIELDS))


TRAIN_FIELDS = frozenset(
    {"kind", "epochs", "calibration_folds", "cold_folds", "cold_start_coverage", "ensemble", "warm_epochs"}
)

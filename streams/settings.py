"""Settings of the streams worker (``SWITCHYARD_STREAMS_*``), built in entrypoints only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .cachewatch import CacheWatchConfig
from .opportunity import OpportunityConfig


class QualityDetectorConfig(BaseModel):
    """Bernoulli CUSUM on the acceptance of routed answers, per (task, model).

    ``drop`` is the shift (in acceptance points, 0..1) the detector is tuned to catch fastest;
    ``threshold`` is the log-likelihood-ratio level that fires (higher: fewer false alarms, later
    detection); ``resolve_threshold`` is the level of the reverse test that resolves.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop: float = Field(
        default=0.15, gt=0, lt=1, description="Acceptance drop (0..1) the CUSUM is tuned to catch fastest."
    )
    threshold: float = Field(
        default=10.0,
        gt=0,
        description="Log-likelihood-ratio level that fires (higher: fewer false alarms, later detection).",
    )
    resolve_threshold: float = Field(
        default=6.0, gt=0, description="Level of the reverse (recovery) statistic that resolves an alert."
    )
    reference_events: int = Field(
        default=300, ge=10, description="Events used to learn a reference when none is configured."
    )
    reference_z: float = Field(
        default=1.5,
        ge=0,
        description="A learned reference is its estimate minus z standard errors (0: the estimate).",
    )
    reference_lag: int = Field(
        default=1000, ge=0, description="In-control events join a learned reference when this old."
    )
    reference_quiet: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Events join a learned reference only while the statistic is below this share "
        "of the threshold.",
    )
    reference_max_events: int = Field(
        default=20_000, ge=10, description="Weight cap of a learned reference: older evidence fades."
    )
    min_reference: float = Field(
        default=0.05, ge=0, le=1, description="Floor of the reference acceptance (a lower one is raised)."
    )


class CalibrationDetectorConfig(BaseModel):
    """Gap between the router's predicted and the observed acceptance, per task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(
        default=500, ge=20, description="About this many latest labelled events of a task are compared."
    )
    min_events: int = Field(default=200, ge=10, description="Events in the window before it can fire.")
    max_gap: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="Absolute predicted-minus-observed gap that fires; resolves below half of it.",
    )
    z: float = Field(default=5.0, gt=0, description="Significance (z-score) the gap needs to fire.")


class InputDriftConfig(BaseModel):
    """evidently data-drift between a task's reference window and its current window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference_size: int = Field(
        default=300, ge=30, description="First feature rows of a task that form its reference window."
    )
    current_size: int = Field(
        default=300, ge=30, description="Latest feature rows of a task compared with the reference window."
    )
    drift_share: float = Field(default=0.5, gt=0, le=1, description="Share of drifted columns that fires.")
    p_threshold: float = Field(
        default=0.001, gt=0, lt=1, description="Per-column test p-value that counts as drift."
    )
    check_every: int = Field(default=300, ge=10, description="New events of a task between checks.")


class StreamsSettings(BaseSettings):
    """Everything the Faust worker needs: ids, state, ports, detector tuning, on-call sinks."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_STREAMS_", env_file=None, extra="ignore", env_nested_delimiter="__"
    )

    app_id: str = Field(
        default="switchyard-streams",
        min_length=1,
        description="Faust app id: the consumer group, the prefix of internal topics, the state subdir.",
    )
    state_dir: Path = Field(default=Path(".state"), description="Faust data and reports go below it.")
    web_host: str = Field(
        default="127.0.0.1", description="Address the worker's web server (/metrics, /stats/) binds to."
    )
    web_port: int = Field(default=6066, ge=1, le=65535, description="Port of the worker's web server.")
    web_enabled: bool = Field(
        default=True, description="Run the web server (off: no /metrics, /stats/ or /progress/ views)."
    )
    replication: int = Field(default=1, ge=1, le=5, description="Replication of Faust's own topics.")
    catalog_path: Path | None = Field(
        default=None, description="Catalog YAML (model tiers); default the built-in one."
    )
    reference_path: Path | None = Field(
        default=None, description='JSON {"task": {"model": acceptance}}: quality reference per task/model.'
    )
    accept_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Feedback value counted as accepted."
    )
    join_ttl_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="How long a call waits for feedback."
    )
    join_sweep_s: float = Field(
        default=60.0, gt=0, description="Seconds between sweeps that drop join entries older than the TTL."
    )
    window_s: float = Field(default=300.0, gt=0, description="Tumbling window of the per-task tables.")
    window_expires_s: float = Field(
        default=24 * 3600.0, gt=0, description="How long (s) the per-task tables keep a past window."
    )
    batch_size: int = Field(
        default=1000, ge=1, description="Most events the join and monitor agents take per batch."
    )
    producer_linger_s: float = Field(
        default=0.05, ge=0, le=1, description="Producer batching delay: fewer, larger produce requests."
    )
    batch_within_s: float = Field(
        default=0.2, gt=0, description="Longest wait (s) for a batch to fill before it is processed anyway."
    )
    direct_produce: bool = Field(
        default=True,
        description="The join hands its outputs and changelog records to the producer directly.",
    )
    replay_guard: bool = Field(
        default=True,
        description="After an assignment the join reads back the outcomes it already published and "
        "does not publish them again (exactly-once outcomes across a kill -9: streams/replayguard.py).",
    )
    replay_lookback_s: float = Field(
        default=60.0,
        ge=0,
        description="How far (s) before the replay's first input record the join reads its outputs back "
        "(covers the clock skew between the gateway and the worker).",
    )
    fast_drain: bool = Field(
        default=True,
        description="Hand fetched records to the streams without Faust's per-record tasks (fastdrain.py).",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        description="Event loop of the worker: uvloop when importable (auto), uvloop, or asyncio's own.",
    )
    faust_monitor: bool = Field(
        default=False,
        description="Faust's per-record Monitor statistics (its own stats views); off saves ~3 % CPU.",
    )
    gc_freeze: bool = Field(
        default=True,
        description="Freeze the start-up heap out of the cyclic GC (streams/gcpolicy.py).",
    )
    gc_gen0: int = Field(
        default=20_000, ge=0, description="Generation-0 GC threshold (0: Python's default, 700)."
    )
    low_margin: float = Field(default=0.05, ge=0, le=1, description="Top-2 score gap counted as unsure.")
    quality: QualityDetectorConfig = Field(
        default_factory=QualityDetectorConfig,
        description="Bernoulli CUSUM on the acceptance of routed answers, per (task, model).",
    )
    calibration: CalibrationDetectorConfig = Field(
        default_factory=CalibrationDetectorConfig,
        description="Gap between the router's predicted and the observed acceptance, per task.",
    )
    opportunity: OpportunityConfig = Field(
        default_factory=OpportunityConfig,
        description="Savings opportunities: tasks on expensive tiers without good cheap-tier evidence.",
    )
    cache_watch: CacheWatchConfig = Field(
        default_factory=CacheWatchConfig,
        description="The semantic cache's false-hit watch per task (streams/cachewatch.py).",
    )
    input_drift: InputDriftConfig = Field(
        default_factory=InputDriftConfig,
        description="evidently data-drift between a task's reference window and its current window.",
    )
    input_drift_enabled: bool = Field(
        default=True, description="Run the input-drift checks (off: feature records are read and skipped)."
    )
    webhook_url: str | None = Field(
        default=None, description="Alertmanager /api/v2/alerts or PagerDuty enqueue URL."
    )
    webhook_kind: Literal["alertmanager", "pagerduty"] = Field(
        default="alertmanager", description="Webhook body: Alertmanager JSON or PagerDuty Events v2."
    )
    pagerduty_routing_key: SecretStr | None = Field(
        default=None, description="PagerDuty Events v2 routing key; required when the kind is pagerduty."
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="HTTP timeout (s) of one attempt.")
    webhook_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts per alert (exponential backoff) before it fails."
    )
    report_base_url: str | None = Field(
        default=None, description="Prefix for report links; default file:// URLs under the state dir."
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("SWITCHYARD_STREAMS_WEBHOOK_URL must be an http(s) URL")
        return v

    @property
    def faust_dir(self) -> Path:
        return self.state_dir / "faust" / self.app_id

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    def load_reference(self) -> dict[str, dict[str, float]]:
        """The configured quality reference, or an empty one (then it is learned per task)."""
        if self.reference_path is None:
            return {}
        try:
            raw = json.loads(self.reference_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read reference file {self.reference_path}: {exc}") from exc
        return _Reference.model_validate(raw).root


class _Reference(RootModel[dict[str, dict[str, float]]]):
    """Validated shape of the reference file."""

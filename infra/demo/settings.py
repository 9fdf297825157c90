"""What one demo run is: its knobs (:class:`DemoSettings`, env ``SWITCHYARD_DEMO_*``) and its
identity (:class:`RunContext`: ids, paths, and the environment its child processes get)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[2]
CHEAP = "mistralai/Mixtral-8x7B-Instruct-v0.1"
BASE_MIX = {"mmlu": 1.0, "gsm8k": 1.0, "routerbench": 1.0}
DEMO_TARGET = 0.95  # the gateway's default quality_target, which the replayed requests keep


class DemoSettings(BaseSettings):
    """Knobs of ``make demo`` (env ``SWITCHYARD_DEMO_*``)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_DEMO_", env_file=None, extra="ignore")

    drift_story: bool = Field(
        default=True,
        description="Story (a): NEW_TASK appears, the emulator breaks the cheap model on it, a drift "
        "alert fires and the loop restores quality. false runs story (b) alone.",
    )
    opportunity_story: bool = Field(
        default=True,
        description="Story (b): OPPORTUNITY_TASK appears with real recorded answers and no fault; the "
        "savings-opportunity notice, exploration and the loop route it cheaply. false runs (a) alone.",
    )
    cache_story: bool = Field(
        default=True,
        description="Story (c): the same near-duplicate traffic with the gateway's semantic cache off, "
        "then on; the report shows hit rate, false hits and savings. The stories before it opt out of "
        "the cache, so their figures are routing alone.",
    )
    cache_requests: int = Field(default=300, ge=20, description="Requests of each of story (c)'s two runs.")
    cache_near_duplicates: float = Field(
        default=0.3, ge=0, lt=1, description="Story (c): share of its requests that are near-duplicates."
    )
    new_task: str = Field(
        default="professional_law",
        description="Story (a): the MMLU subject that appears later and on which the cheap model breaks.",
    )
    opportunity_task: str = Field(
        default="world_religions",
        description="Story (b): the MMLU subject that appears later, on which the cheap tier is "
        "genuinely good (recorded accuracy Mixtral 0.901 vs GPT-4 0.860).",
    )
    opportunity_share: float = Field(
        default=0.4, gt=0, lt=1, description="Story (b): the new task's share of the traffic once it appears."
    )
    opportunity_chunk: int = Field(
        default=60, ge=10, description="Story (b): requests per replay chunk while waiting for the notice."
    )
    opportunity_max_requests: int = Field(
        default=900, ge=10, description="Story (b): give up on the opportunity notice after these requests."
    )
    opportunity_after_requests: int = Field(
        default=240, ge=10, description="Story (b): requests replayed after its new champion serves."
    )
    explore_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The gateway's exploration share in the demo (SWITCHYARD_GATEWAY_EXPLORE_SHARE; "
        "product default 0.05): the new task must gather tens of labelled cheap answers in a few "
        "hundred requests, not in hours.",
    )
    explore_min_requests: int = Field(
        default=20,
        ge=1,
        description="Routed requests of a task before the gateway explores it "
        "(SWITCHYARD_GATEWAY_EXPLORE_MIN_REQUESTS; product default 50).",
    )
    explore_budget_usd: float = Field(
        default=2.0,
        ge=0,
        description="The gateway's exploration cap per task and hour in the demo "
        "(SWITCHYARD_GATEWAY_EXPLORE_BUDGET_USD_PER_TASK_HOUR; product default 0.25).",
    )
    opportunity_min_outcomes: int = Field(
        default=100,
        ge=1,
        description="Outcomes a task needs before the opportunity detector judges it "
        "(SWITCHYARD_STREAMS_OPPORTUNITY__MIN_OUTCOMES; product default 60): by then exploration, "
        "which starts after EXPLORE_MIN_REQUESTS, has labelled enough cheap answers for the retrain.",
    )
    opportunity_timeout_s: float = Field(
        default=480.0,
        gt=0,
        description="Story (b): longest wait (s) from the notice to its new champion serving.",
    )
    max_rows: int | None = Field(
        default=None,
        ge=50,
        description="Bootstrap rows per dataset for training; default 800 when story (a) runs, else "
        "400. With 400 and both story tasks left out, the initial router's cold start sends every "
        "unseen task to GPT-4: story (a) then has no drift to repair; with 800 it sends 33% of "
        "professional_law to the cheap model, but also 56% of world_religions, so story (b) alone "
        "keeps 400 (docs/closed-loop.md).",
    )
    steady_requests: int = Field(
        default=150, ge=10, description="Requests replayed before the new task appears."
    )
    drift_chunk: int = Field(default=60, ge=10, description="Requests per replay chunk while waiting.")
    drift_max_requests: int = Field(default=720, ge=10, description="Give up on the alert after these.")
    after_requests: int = Field(
        default=240, ge=10, description="Requests replayed with the drifted mix after the retrain."
    )
    concurrency: int = Field(default=8, ge=1, description="Requests in flight at once while replaying.")
    during_rate: float = Field(default=3.0, gt=0, description="Requests/s while the retrain runs.")
    feedback_share: float = Field(
        default=1.0, ge=0, le=1, description="Share of replayed answers that get a feedback label."
    )
    train_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest wait (s) for the initial training."
    )
    start_timeout_s: float = Field(
        default=420.0,
        gt=0,
        description="Longest wait (s) for each service (emulator, streams, gateway) to be ready.",
    )
    alert_extra_wait_s: float = Field(
        default=90.0, ge=0, description="Longest wait (s) for the webhook page after the drift replay stops."
    )
    retrain_timeout_s: float = Field(
        default=480.0, gt=0, description="Longest wait (s) for the retrain and the swap of the new router."
    )
    budget_usd: float = Field(default=2.0, ge=0, description="Distillation spend cap of the retrain (USD).")
    budget_calls: int = Field(default=240, ge=0, description="Distillation upstream-call cap of the retrain.")
    emulator_speed: float = Field(
        default=0.0, ge=0, description="Emulator latency factor: 1 realistic, 0 no added latency."
    )
    seed: int = Field(
        default=0, description="Seed of the replayed traffic (each replay chunk derives its own)."
    )
    report_root: Path = Field(
        default=ROOT / "reports" / "demo", description="Reports go to <root>/<run-id>/."
    )

    @model_validator(mode="after")
    def _two_tasks(self) -> DemoSettings:
        if self.drift_story and self.opportunity_story and self.new_task == self.opportunity_task:
            raise ValueError("NEW_TASK and OPPORTUNITY_TASK must differ when both stories run")
        if not (self.drift_story or self.opportunity_story):
            raise ValueError("switch at least one story on (DRIFT_STORY, OPPORTUNITY_STORY)")
        return self

    @property
    def rows(self) -> int:
        """The bootstrap rows per dataset the demo trains on (see ``max_rows``)."""
        return self.max_rows or (800 if self.drift_story else 400)

    @property
    def story_tasks(self) -> list[str]:
        """The tasks the initial router never sees: those of the stories that run."""
        return [
            t
            for on, t in ((self.drift_story, self.new_task), (self.opportunity_story, self.opportunity_task))
            if on
        ]

    @property
    def drift_mix(self) -> dict[str, float]:
        """The base mix with the new task at ~40% of the traffic."""
        return {**BASE_MIX, self.new_task: sum(BASE_MIX.values()) * 2 / 3}

    @property
    def opportunity_mix(self) -> dict[str, float]:
        """Story (b)'s traffic: what ran before (the drifted mix when story (a) ran) plus the
        opportunity task at ``opportunity_share`` of it."""
        before = self.drift_mix if self.drift_story else dict(BASE_MIX)
        rest = sum(before.values())
        return {**before, self.opportunity_task: rest * self.opportunity_share / (1 - self.opportunity_share)}


@dataclass(frozen=True)
class RunContext:
    """One run's ids, paths and child-process environments (per-run topic prefix and model name)."""

    cfg: DemoSettings
    run_id: str
    log_dir: Path
    data_dir: Path
    kafka_bootstrap: str
    tracking_uri: str
    prefix: str
    model_name: str
    state_dir: Path  # the training state (loop runs), with the shared embedding cache linked in
    ray_dir: Path  # the gateway's Ray temp dir: short, for Ray's unix sockets
    api_key: str
    cli: str  # the ``switchyard`` executable of this environment
    base_env: dict[str, str]
    train_env: dict[str, str]

    @classmethod
    def create(cls, cfg: DemoSettings, run_id: str, log_dir: Path) -> RunContext:
        """Resolve the data and stack settings and prepare the state dir."""
        from infra.emulator.server import resolve_data_dir
        from services.contracts.settings import KafkaSettings, MLflowSettings

        kafka, ml = KafkaSettings(), MLflowSettings()
        data_dir = resolve_data_dir(None)
        prefix = f"demo-{run_id}."
        model_name = f"switchyard-router-demo-{run_id}"
        state = log_dir / "state"
        (state / "cache").mkdir(parents=True, exist_ok=True)
        shared_cache = (ROOT / ".state" / "cache" / "embeddings").resolve()
        shared_cache.mkdir(parents=True, exist_ok=True)
        if not (state / "cache" / "embeddings").exists():
            (state / "cache" / "embeddings").symlink_to(shared_cache)
        base_env = {
            **os.environ,
            "SWITCHYARD_KAFKA_TOPIC_PREFIX": prefix,
            "SWITCHYARD_MLFLOW_REGISTERED_MODEL": model_name,
            "SWITCHYARD_MLFLOW_EXPERIMENT": "switchyard-demo",
            # the router replicas resolve models:/ URIs with this (else MLflow's local default)
            "SWITCHYARD_MLFLOW_TRACKING_URI": ml.tracking_uri,
            "MLFLOW_TRACKING_URI": ml.tracking_uri,
            "SWITCHYARD_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
        train_env = {
            **base_env,
            "SWITCHYARD_STATE_DIR": str(state),
            "SWITCHYARD_TRAIN_EXCLUDE_TASKS": json.dumps(cfg.story_tasks),
            "SWITCHYARD_TRAIN_MAX_ROWS": str(cfg.rows),
        }
        return cls(
            cfg=cfg,
            run_id=run_id,
            log_dir=log_dir,
            data_dir=data_dir,
            kafka_bootstrap=kafka.bootstrap,
            tracking_uri=ml.tracking_uri,
            prefix=prefix,
            model_name=model_name,
            state_dir=state,
            ray_dir=Path(f"/tmp/sy-demo-{run_id[-6:]}"),  # noqa: S108 - Ray's unix sockets need a short path
            api_key=f"sk-demo-{uuid.uuid4().hex[:16]}",
            cli=str(Path(sys.executable).parent / "switchyard"),
            base_env=base_env,
            train_env=train_env,
        )

    @property
    def gateway_env(self) -> dict[str, str]:
        return {
            **self.base_env,
            "SWITCHYARD_GATEWAY_STATE_DIR": str(self.ray_dir),
            "SWITCHYARD_GATEWAY_API_KEYS": json.dumps([self.api_key]),
            "SWITCHYARD_GATEWAY_ROUTER_TIMEOUT_S": "10",
            # the replicas re-resolve the champion alias this often (the swap follows promotion)
            "SWITCHYARD_GATEWAY_ROUTER_POLL_S": "2",
            # the stories' tasks keep their own metric labels even before a router knows them
            "SWITCHYARD_GATEWAY_METRIC_TASKS": json.dumps([self.cfg.new_task, self.cfg.opportunity_task]),
            # budgeted exploration, sized for a few minutes of traffic (see DemoSettings)
            "SWITCHYARD_GATEWAY_EXPLORE_SHARE": str(self.cfg.explore_share),
            "SWITCHYARD_GATEWAY_EXPLORE_MIN_REQUESTS": str(self.cfg.explore_min_requests),
            "SWITCHYARD_GATEWAY_EXPLORE_BUDGET_USD_PER_TASK_HOUR": str(self.cfg.explore_budget_usd),
            # story (c): the semantic cache; every replay before it opts out per request
            "SWITCHYARD_GATEWAY_CACHE_ENABLED": str(self.cfg.cache_story).lower(),
        }

    @property
    def streams_env(self) -> dict[str, str]:
        return {
            **self.base_env,
            "SWITCHYARD_STREAMS_STATE_DIR": str(self.log_dir / "streams"),
            "SWITCHYARD_STREAMS_OPPORTUNITY__MIN_OUTCOMES": str(self.cfg.opportunity_min_outcomes),
        }

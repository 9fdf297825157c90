"""Emulator settings (env ``SWITCHYARD_EMULATOR_*``) and the start-time config file's schema."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .faults import DriftRule, FaultSpec, LatencyProfile


class EmulatorSettings(BaseSettings):
    """How the emulator runs. Built by the CLI; every field can come from the environment."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_EMULATOR_", env_file=None, extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to serve on (unless fd is set).")
    port: int = Field(default=8100, ge=0, le=65535, description="Port to serve on (unless fd is set).")
    fd: int | None = Field(default=None, description="Serve on this already-bound socket (tests).")
    data_dir: Path | None = Field(default=None, description="Benchmark data; default SWITCHYARD_DATA_DIR.")
    datasets: list[str] | None = Field(
        default=None, description="Only these datasets (mmlu, gsm8k, routerbench)."
    )
    catalog: Path | None = Field(default=None, description="Catalog YAML; default the built-in one.")
    config: Path | None = Field(default=None, description="YAML/JSON with faults, drift, latency.")
    speed: float = Field(default=1.0, ge=0, description="Latency factor: 1 realistic, 0 no added latency.")
    seed: int = Field(default=0, description="Seed of the fault and latency draws (same seed, same faults).")
    chunk_words: int = Field(default=4, ge=1, description="Words per stream chunk.")
    api_key: str | None = Field(
        default=None, description="If set, requests must present it (Bearer or x-api-key)."
    )
    log_level: str = Field(default="warning", description="uvicorn log level.")
    cache: bool = Field(default=True, description="Cache the indexed corpus (skips CSV parsing next start).")
    cache_dir: Path | None = Field(
        default=None, description="Corpus cache; default <SWITCHYARD_STATE_DIR>/emulator-cache."
    )

    def corpus_cache_dir(self) -> Path | None:
        """Where the corpus cache lives, or None when caching is off."""
        if not self.cache:
            return None
        if self.cache_dir is not None:
            return self.cache_dir
        from services.contracts.settings import StackSettings

        return StackSettings().state_dir / "emulator-cache"


class EmulatorConfig(BaseModel):
    """The start-time config file: faults per model, drift rules, latency profile overrides."""

    model_config = ConfigDict(extra="forbid")

    faults: dict[str, FaultSpec] = Field(default_factory=dict)
    drift: list[DriftRule] = Field(default_factory=list)
    latency: dict[str, LatencyProfile] = Field(default_factory=dict)


class ConfigFileError(ValueError):
    """The emulator config file is unreadable or invalid."""


def load_config(path: Path | None) -> EmulatorConfig:
    """Read and validate a YAML or JSON config file (``None``: the empty config)."""
    if path is None:
        return EmulatorConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return EmulatorConfig.model_validate(raw or {})
    except (OSError, ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, ValidationError):
            raise ConfigFileError(f"emulator config {path} is invalid: {exc}") from exc
        raise ConfigFileError(f"cannot read emulator config {path}: {exc}") from exc

"""Training-side settings (``SWITCHYARD_STATE_DIR`` for caches and artefacts)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainingSettings(BaseSettings):
    """Where training keeps its embedding cache, router artefacts and reports."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", env_file=None, extra="ignore")

    state_dir: Path = Field(default=Path(".state"), description="The project's state directory.")
    reports_dir: Path = Field(default=Path("reports/router"), description="Default output of `router eval`.")

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache" / "embeddings"

    @property
    def routers_dir(self) -> Path:
        return self.state_dir / "routers"

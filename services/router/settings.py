"""Serving-side router settings (``SWITCHYARD_ROUTER_*``), built in entrypoints."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RouterSettings(BaseSettings):
    """How the gateway's router replicas run the artefact's encoder (the artefact itself is
    `SWITCHYARD_GATEWAY_ROUTER_REF`, moved at run time through the deployment's `user_config`)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_ROUTER_", env_file=None, extra="ignore")

    device: str | None = Field(default=None, description="cuda/cpu; default: cuda when available.")
    quantize_int8: bool | None = Field(
        default=None,
        description="Override the artefact's encoder: int8 dynamic quantisation on CPU "
        "(see docs/router.md, 'Scoring speed'). Default: what the router was trained with.",
    )
    backend: str | None = Field(
        default=None,
        pattern="^(torch|onnx|static)$",
        description="Override the artefact's encoder backend (torch or onnx). Default: its manifest's. "
        "A static-encoder router ignores the overrides (its heads fit only its own vectors); `static` "
        "on a transformer router is refused at load (another embedding space).",
    )
    onnx_cache_dir: Path | None = Field(
        default=None,
        description="Where the ONNX export of the encoder is cached; default <gateway state dir>/cache/onnx.",
    )

    def encoder_options(self, threads: int, state_dir: Path) -> dict[str, object]:
        """Keyword arguments of ``load_router`` for the serving encoder: the overrides set here
        (unset ones keep the artefact's manifest), ``threads`` (0: the encoder's default) and the
        ONNX cache (absolute, so every replica finds the same files)."""
        cache = self.onnx_cache_dir or Path(state_dir) / "cache" / "onnx"
        return {
            "device": self.device,
            "quantize_int8": self.quantize_int8,
            "backend": self.backend,
            "threads": threads or None,
            "onnx_cache_dir": cache.resolve(),
        }

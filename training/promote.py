"""Promotion and redeploy: move ``champion`` (with history), tell a running gateway to hot-swap.

The alias moves in MLflow (:mod:`training.registry`); the serving replicas follow through Ray
Serve ``reconfigure``: we redeploy the app with the router's ``user_config`` pointing at the
*pinned* version (``models:/<name>/<version>``), so a change of alias is always a change of
config (an unchanged ``@champion`` string would not trigger ``reconfigure``). Each replica loads,
verifies and smoke-checks the new router and swaps atomically; if that fails it keeps the old one
and reports ``last_error`` in ``/readyz`` — which :func:`redeploy` reads back and returns.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pydantic import BaseModel

from services.contracts.settings import MLflowSettings

from .registry import RegistryError, _client, promote, rollback

log = logging.getLogger(__name__)


class RedeployResult(BaseModel):
    """What the gateway reports after a swap request."""

    requested: str
    swapped: bool
    serving_version: str | None = None
    serving_ref: str | None = None
    error: str | None = None
    seconds: float = 0.0


def version_ref(ms: MLflowSettings, version: str) -> str:
    """The pinned model URI of a registered version."""
    return f"models:/{ms.registered_model}/{version}"


def router_version_of(ms: MLflowSettings, version: str) -> str | None:
    """The router artefact version (``mlp-…``) recorded on a registered model version."""
    from mlflow.exceptions import MlflowException

    try:
        mv = _client(ms).get_model_version(ms.registered_model, version)
    except MlflowException as exc:
        raise RegistryError(f"{ms.registered_model} version {version}: {exc.message}") from exc
    return (mv.tags or {}).get("router_version")


def alias_version(ms: MLflowSettings, alias: str = "champion") -> str | None:
    """The version behind ``alias`` (None if the alias or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(ms).get_model_version_by_alias(ms.registered_model, alias).version)
    except MlflowException:
        return None


def tag_version(ms: MLflowSettings, version: str, tags: dict[str, Any]) -> None:
    """Set tags on a registered version (the gate's verdict travels with the model)."""
    client = _client(ms)
    for k, v in tags.items():
        client.set_model_version_tag(ms.registered_model, version, k, str(v)[:4900])


def redeploy(ref: str, expect_version: str | None, *, timeout_s: float = 120.0) -> RedeployResult:
    """Ask the running local gateway (``switchyard serve``) to swap to ``ref`` and wait until its
    router reports ``expect_version`` or a failed swap. No gateway running → ``swapped=False``."""
    import httpx

    from services.gateway.deployments import GatewayArgs
    from services.gateway.local import load_state, save_state, swap_router
    from services.gateway.settings import GatewaySettings

    t0 = time.perf_counter()
    settings = GatewaySettings()
    try:
        state = load_state(settings)
    except FileNotFoundError as exc:
        return RedeployResult(requested=ref, swapped=False, error=str(exc))
    try:
        before = httpx.get(state["url"] + "/readyz", timeout=5).json().get("router", {})
    except (httpx.HTTPError, ValueError) as exc:
        return RedeployResult(
            requested=ref, swapped=False, error=f"gateway at {state['url']} unreachable: {exc}"
        )
    failed_before = int(before.get("failed_swaps") or 0)
    # The local Ray that `switchyard serve` starts uses token auth; Ray reads the mode at import.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    ray.init(address=state["address"], logging_level=logging.WARNING, ignore_reinit_error=True)
    try:
        args = swap_router(GatewayArgs.model_validate(state["args"]), ref)
        save_state(settings, state["address"], args, state["url"])
    finally:
        ray.shutdown()
    deadline = time.monotonic() + timeout_s
    router: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            router = httpx.get(state["url"] + "/readyz", timeout=5).json().get("router", {})
        except (httpx.HTTPError, ValueError):
            router = {}
        if router.get("ref") == ref and (expect_version is None or router.get("version") == expect_version):
            return RedeployResult(
                requested=ref,
                swapped=True,
                serving_version=router.get("version"),
                serving_ref=ref,
                seconds=time.perf_counter() - t0,
            )
        if int(router.get("failed_swaps") or 0) > failed_before:
            break
        time.sleep(1.0)
    return RedeployResult(
        requested=ref,
        swapped=False,
        serving_version=router.get("version"),
        serving_ref=router.get("ref"),
        error=router.get("last_error") or "swap not confirmed in time",
        seconds=time.perf_counter() - t0,
    )


def promote_and_redeploy(
    ms: MLflowSettings, version: str, *, do_redeploy: bool = True
) -> tuple[str, RedeployResult | None]:
    """Move ``champion`` to ``version`` then (optionally) hot-swap the gateway to it."""
    v = promote(ms, version=version)
    if not do_redeploy:
        return v, None
    res = redeploy(version_ref(ms, v), router_version_of(ms, v))
    log.info("redeploy to %s: %s", res.requested, res.model_dump())
    return v, res


def rollback_and_redeploy(
    ms: MLflowSettings, *, do_redeploy: bool = True
) -> tuple[str, RedeployResult | None]:
    """Move ``champion`` back to the previous version and have the gateway follow."""
    v = rollback(ms)
    if not do_redeploy:
        return v, None
    return v, redeploy(version_ref(ms, v), router_version_of(ms, v))

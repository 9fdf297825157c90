"""Promotion and redeploy: move ``champion`` (with history), tell a running gateway to hot-swap.

The alias moves in MLflow (:mod:`training.registry`); the serving replicas follow through Ray
Serve ``reconfigure``: we redeploy the app with the router's ``user_config`` pointing at the
*pinned* version (``models:/<name>/<version>``), so a change of alias is always a change of
config (an unchanged ``@champion`` string would not trigger ``reconfigure``). Each replica loads,
verifies and smoke-checks the new router and swaps atomically; if that fails it keeps the old one
and reports ``last_error`` in ``/readyz`` — which :func:`redeploy` reads back and returns.

Gating (issue 15, item 5): an operator's promotion (``switchyard router promote``) and swap
(``switchyard serve swap``) go through :func:`check_version` / :func:`check_ref` first: the version
must carry a passed gate record (the tags ``gate``, ``gate_kind``, ``gate_reasons`` on the
registered model version, see :data:`training.registry.GATE_TAG`) and must verify (downloaded,
loaded with its content hashes checked, smoke-checked). ``--force`` overrides both and records
that it did (tag ``forced_promotion``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pydantic import BaseModel

from services.contracts.settings import MLflowSettings
from services.router.promotion import (
    GATE_KIND_TAG,
    GATE_REASONS_TAG,
    GATE_TAG,
    NO_GATE_RECORD,
    gate_problem,
    parse_model_ref,
    verify,
)

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


class PromotionCheck(BaseModel):
    """Whether a router may be promoted or swapped in without ``--force``, and why not."""

    ref: str
    name: str | None = None
    version: str | None = None
    gate: str | None = None
    gate_kind: str | None = None
    gate_reasons: str | None = None
    verified: bool = False
    router_version: str | None = None
    problems: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        what = f"{self.name} version {self.version}" if self.version else self.ref
        if self.ok:
            return f"{what}: gate {self.gate} ({self.gate_kind}), verified ({self.router_version})"
        return f"{what}: " + "; ".join(self.problems)


def _verify(check: PromotionCheck, ref: str, tracking_uri: str) -> None:
    """Download, load (content hashes checked) and smoke-check the router behind ``ref``."""
    version, failed = verify(ref, tracking_uri)
    if failed:
        check.problems.append(failed)
        return
    if check.router_version and version != check.router_version:
        check.problems.append(
            f"fails verification: the artefact is {version}, the version was registered as "
            f"{check.router_version}"
        )
        return
    check.router_version = version
    check.verified = True


def check_version(
    ms: MLflowSettings, version: str, *, name: str | None = None, verify: bool = True
) -> PromotionCheck:
    """Whether registered ``version`` (of ``name``, default the configured registered model) has a
    passed gate record and verifies."""
    from mlflow.exceptions import MlflowException

    name = name or ms.registered_model
    check = PromotionCheck(ref=f"models:/{name}/{version}", name=name, version=str(version))
    try:
        mv = _client(ms).get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} version {version}: {exc.message}") from exc
    except OSError as exc:
        raise RegistryError(f"MLflow at {ms.tracking_uri} is unreachable: {exc}") from exc
    tags = mv.tags or {}
    check.gate, check.gate_kind = tags.get(GATE_TAG), tags.get(GATE_KIND_TAG)
    check.gate_reasons, check.router_version = tags.get(GATE_REASONS_TAG), tags.get("router_version")
    problem = gate_problem(tags)
    if problem:
        check.problems.append(problem)
    if verify:
        _verify(check, check.ref, ms.tracking_uri)
    return check


def check_ref(ms: MLflowSettings, ref: str, *, verify: bool = True) -> PromotionCheck:
    """:func:`check_version` for a router reference: ``models:/NAME/N`` or ``models:/NAME@ALIAS``
    are checked as that registered version; a local path or ``runs:/`` URI has no gate record (it
    is only verified, and needs ``--force``)."""
    from mlflow.exceptions import MlflowException

    parsed = parse_model_ref(ref)
    if parsed is None:
        check = PromotionCheck(ref=ref)
        check.problems.append(NO_GATE_RECORD)
        if verify:
            _verify(check, ref, ms.tracking_uri)
        return check
    name, version, alias = parsed
    if version is None:
        try:
            version = str(_client(ms).get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            raise RegistryError(f"{ref}: {exc.message}") from exc
        except OSError as exc:
            raise RegistryError(f"MLflow at {ms.tracking_uri} is unreachable: {exc}") from exc
    check = check_version(ms, version, name=name, verify=verify)
    check.ref = ref
    return check


def promote_checked(
    ms: MLflowSettings,
    *,
    version: str | None = None,
    from_alias: str = "challenger",
    to_alias: str = "champion",
    force: bool = False,
) -> tuple[str | None, PromotionCheck]:
    """Move ``to_alias`` to ``version`` (default: behind ``from_alias``) if it passed its gate and
    verifies, or with ``force`` whatever the checks say (recorded on the version as
    ``forced_promotion``). Returns (the version promoted or None when refused, the check)."""
    from mlflow.exceptions import MlflowException

    if version is None:
        try:
            version = str(_client(ms).get_model_version_by_alias(ms.registered_model, from_alias).version)
        except MlflowException as exc:
            raise RegistryError(f"{ms.registered_model}@{from_alias}: {exc.message}") from exc
        except OSError as exc:
            raise RegistryError(f"MLflow at {ms.tracking_uri} is unreachable: {exc}") from exc
    check = check_version(ms, version)
    if not check.ok and not force:
        return None, check
    if not check.ok:
        tag_version(ms, version, {"forced_promotion": "; ".join(check.problems)})
    return promote(ms, version=version, from_alias=from_alias, to_alias=to_alias), check


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

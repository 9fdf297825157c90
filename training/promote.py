"""Promotion: move ``champion`` (with history); the serving replicas follow by themselves.

Every replica of the gateway follows the alias it is configured with
(:mod:`services.gateway.follow`): it re-resolves ``models:/<name>@champion`` every poll interval,
loads, verifies and smoke-checks the version it now points at and swaps atomically, keeping the old
router if that fails. So promotion is only moving the alias, rollback is moving it back, and
nothing here reaches into Ray or the gateway's code. :func:`wait_serving` then reads the
gateway's ``/readyz`` (plain HTTP) until it reports the new version, or the replica's refusal.

Gating (issue 15, item 5): an operator's promotion (``switchyard router promote``) goes through
:func:`check_version` / :func:`check_ref` first: the version must carry a passed gate record (the
tags ``gate``, ``gate_kind``, ``gate_reasons`` on the registered model version, see
:data:`training.registry.GATE_TAG`) and must verify (downloaded, loaded with its content hashes
checked, smoke-checked). ``--force`` overrides both and records that it did (tag
``forced_promotion``).
"""

from __future__ import annotations

import logging
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


class ServingReport(BaseModel):
    """What the gateway reported after the alias moved: whether it serves ``requested`` now."""

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


def _follow_states(ready: dict[str, Any]) -> list[dict[str, Any]]:
    """The alias followers ``/readyz`` reports: the router replica's and the ingress replica's."""
    router = ready.get("router") or {}
    routing = ready.get("routing") or {}
    return [f for f in (router.get("follow"), routing.get("follow")) if isinstance(f, dict)]


def wait_serving(
    gateway_url: str, ref: str, expect_version: str | None, *, timeout_s: float = 180.0, poll_s: float = 1.0
) -> ServingReport:
    """Poll the gateway's ``/readyz`` until its replicas serve the pinned ``ref`` (the version the
    alias now points at), or one reports refusing it (it failed to load or check: the replicas keep
    the old router), or ``timeout_s`` passes. Plain HTTP: nothing of the gateway is imported."""
    import httpx

    t0 = time.perf_counter()
    url = gateway_url.rstrip("/") + "/readyz"
    deadline = time.monotonic() + timeout_s
    router: dict[str, Any] = {}
    error = "the gateway did not report the new version in time"
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(url, timeout=5).json()
        except (httpx.HTTPError, ValueError) as exc:
            error = f"gateway at {gateway_url} unreachable: {exc}"
            time.sleep(poll_s)
            continue
        router = ready.get("router") or {}
        follows = _follow_states(ready)
        serving = router.get("version")
        if (
            follows
            and all(f.get("pinned") == ref for f in follows)
            and (expect_version is None or serving == expect_version)
        ):
            return ServingReport(
                requested=ref,
                swapped=True,
                serving_version=serving,
                serving_ref=ref,
                seconds=time.perf_counter() - t0,
            )
        refused = [f for f in follows if f.get("failed") == ref]
        if refused:
            error = f"the gateway refuses {ref}: {router.get('last_error') or 'it failed to load'}"
            break
        if not follows:
            error = "the gateway reports no alias follower (it serves a pinned router)"
        time.sleep(poll_s)
    return ServingReport(
        requested=ref,
        swapped=False,
        serving_version=router.get("version"),
        serving_ref=(router.get("follow") or {}).get("pinned") or router.get("ref"),
        error=error,
        seconds=time.perf_counter() - t0,
    )


def promote_and_wait(
    ms: MLflowSettings, version: str, *, gateway_url: str | None = None, timeout_s: float = 180.0
) -> tuple[str, ServingReport | None]:
    """Move ``champion`` to ``version``; with ``gateway_url``, wait until that gateway serves it."""
    v = promote(ms, version=version)
    if not gateway_url:
        return v, None
    res = wait_serving(gateway_url, version_ref(ms, v), router_version_of(ms, v), timeout_s=timeout_s)
    log.info("gateway after promoting version %s: %s", v, res.model_dump())
    return v, res


def rollback_and_wait(
    ms: MLflowSettings, *, gateway_url: str | None = None, timeout_s: float = 180.0
) -> tuple[str, ServingReport | None]:
    """Move ``champion`` back to the previous version; with ``gateway_url``, wait until it serves it."""
    v = rollback(ms)
    if not gateway_url:
        return v, None
    return v, wait_serving(gateway_url, version_ref(ms, v), router_version_of(ms, v), timeout_s=timeout_s)

"""MLflow: log a training run, register a router version, move the ``champion`` alias.

Versions of ``switchyard-router`` point at the run's ``router/`` artefact directory. ``--register``
sets the alias ``challenger``; ``promote`` moves ``champion`` (keeping a history in the registered
model's tag ``champion_history`` so ``rollback`` can move it back).

Every registered version carries a gate record, the tags ``gate`` (``passed`` | ``failed`` |
``none``), ``gate_kind`` and ``gate_reasons`` (:func:`gate_record`): the retrain loop's verdict
(``gate_kind=champion``, or ``absolute`` for its first model, when there is no champion); the
first router of a registered model registered outside the loop, which has no champion to be
gated against, is passed by its own training run (``gate_kind=bootstrap``); any other version
registered outside the loop is ``gate=none`` and an operator's ``switchyard router promote``
refuses it without ``--force`` (:mod:`training.promote`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from services.contracts.settings import MLflowSettings
from services.router.artifact import Manifest

log = logging.getLogger(__name__)

HISTORY_TAG = "champion_history"
# the gate record's tag names, read back by promote and by the gateway's swap
from services.router.promotion import GATE_KIND_TAG, GATE_REASONS_TAG, GATE_TAG  # noqa: E402


class RegistryError(RuntimeError):
    """An MLflow registry operation failed (unreachable server, unknown alias/version)."""


class Registered(BaseModel):
    run_id: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def ref(self) -> str:
        if self.name and self.alias:
            return f"models:/{self.name}@{self.alias}"
        if self.name and self.version:
            return f"models:/{self.name}/{self.version}"
        return f"runs:/{self.run_id}/router"


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}{k}.", v, out)
    else:
        out[prefix[:-1]] = value


def _client(settings: MLflowSettings):  # noqa: ANN202
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri)


def gate_record(params: dict[str, Any], champion: str | None, name: str) -> dict[str, str]:
    """The gate tags of a version being registered: the verdict in ``params["gate"]`` (the loop's,
    ``{"passed": bool, "reasons": str}``) if there is one; else a bootstrap pass when the model has
    no champion yet (the first router: nothing to be gated against); else ``none``."""
    verdict = params.get("gate")
    if isinstance(verdict, dict) and "passed" in verdict:
        return {
            GATE_TAG: "passed" if verdict["passed"] else "failed",
            # against the champion, or (no champion yet) the loop's absolute first-model gate
            GATE_KIND_TAG: "champion" if params.get("champion_version") else "absolute",
            GATE_REASONS_TAG: str(verdict.get("reasons") or "")[:4900],
        }
    if champion is None:
        return {
            GATE_TAG: "passed",
            GATE_KIND_TAG: "bootstrap",
            GATE_REASONS_TAG: f"first router of {name}: no champion to be gated against",
        }
    return {
        GATE_TAG: "none",
        GATE_KIND_TAG: "none",
        GATE_REASONS_TAG: f"registered outside the retrain loop: never compared with champion "
        f"version {champion}",
    }


def log_run(
    settings: MLflowSettings,
    artifact_dir: Path,
    manifest: Manifest,
    params: dict[str, Any],
    metrics: dict[str, float],
    *,
    extra_artifacts: list[Path] | None = None,
    register: bool = False,
    alias: str = "challenger",
    run_name: str | None = None,
) -> Registered:
    """Log params, metrics, plots and the router artefact; optionally register it with ``alias``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    try:
        mlflow.set_experiment(settings.experiment)
        with mlflow.start_run(run_name=run_name or manifest.version) as run:
            flat: dict[str, Any] = {}
            _flat("", params, flat)
            mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.set_tags({"router_version": manifest.version, "router_kind": manifest.kind})
            mlflow.log_artifacts(str(artifact_dir), artifact_path="router")
            for p in extra_artifacts or []:
                mlflow.log_artifact(str(p), artifact_path="report")
            run_id = run.info.run_id
            source = f"{run.info.artifact_uri}/router"
        out = Registered(run_id=run_id)
        if register:
            name = settings.registered_model
            try:
                client.get_registered_model(name)
            except MlflowException:
                client.create_registered_model(
                    name, description="Switchyard learned router (services.router)."
                )
            try:
                champion: str | None = str(client.get_model_version_by_alias(name, "champion").version)
            except MlflowException:
                champion = None
            mv = client.create_model_version(
                name,
                source=source,
                run_id=run_id,
                tags={
                    "router_version": manifest.version,
                    "router_kind": manifest.kind,
                    **gate_record(params, champion, name),
                },
            )
            client.set_registered_model_alias(name, alias, mv.version)
            out = Registered(run_id=run_id, name=name, version=str(mv.version), alias=alias)
            log.info("registered %s version %s (%s) as @%s", name, mv.version, manifest.version, alias)
        return out
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {settings.tracking_uri}: {exc.message}") from exc
    except OSError as exc:
        raise RegistryError(f"MLflow at {settings.tracking_uri} is unreachable: {exc}") from exc


def _history(client, name: str) -> list[str]:  # noqa: ANN001
    tags = client.get_registered_model(name).tags or {}
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    except json.JSONDecodeError:
        return []


def promote(
    settings: MLflowSettings,
    *,
    version: str | None = None,
    from_alias: str = "challenger",
    to_alias: str = "champion",
) -> str:
    """Point ``to_alias`` at ``version`` (default: the version behind ``from_alias``)."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    name = settings.registered_model
    try:
        if version is None:
            version = str(client.get_model_version_by_alias(name, from_alias).version)
        else:
            client.get_model_version(name, version)
        history = _history(client, name)
        try:
            current = str(client.get_model_version_by_alias(name, to_alias).version)
        except MlflowException:
            current = None
        if current == version:
            return version
        if current is not None and (not history or history[-1] != current):
            history.append(current)
        history.append(version)
        client.set_registered_model_alias(name, to_alias, version)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-50:]))
    except MlflowException as exc:
        raise RegistryError(f"promote {name}: {exc.message}") from exc
    log.info("%s@%s -> version %s", name, to_alias, version)
    return version


def rollback(settings: MLflowSettings, *, alias: str = "champion") -> str:
    """Move ``alias`` back to the version it pointed at before the last promotion."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    name = settings.registered_model
    try:
        current = str(client.get_model_version_by_alias(name, alias).version)
        history = _history(client, name)
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError(f"{name}@{alias} (version {current}) has no earlier version to roll back to")
        previous = history[-1]
        client.set_registered_model_alias(name, alias, previous)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    except MlflowException as exc:
        raise RegistryError(f"rollback {name}: {exc.message}") from exc
    log.info("%s@%s rolled back %s -> %s", name, alias, current, previous)
    return previous


def log_report(settings: MLflowSettings, report: Any) -> str:
    """Log an evaluation report (markdown, JSON, plot + headline metrics) as an MLflow run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    _client(settings)
    metrics: dict[str, float] = {}
    for section in ("mmlu", "mmlu_without_hsm", "gsm8k"):
        for row in report.data.get(section, []):
            key = "".join(c if c.isalnum() else "_" for c in row["router"])
            metrics[f"{section}.{key}.share_at_95"] = float(row["share_at_95"])
            metrics[f"{section}.{key}.apgr"] = float(row["apgr"])
    for row in (report.data.get("routerbench") or {}).get("table", []):
        metrics[f"routerbench.{row['router']}.cost_saving_at_95"] = float(row["cost_saving_at_95"])
    try:
        mlflow.set_experiment(settings.experiment)
        with mlflow.start_run(run_name="router-eval") as run:
            mlflow.log_metrics(metrics)
            for p in (report.markdown_path, report.json_path, report.plot_path):
                mlflow.log_artifact(str(p), artifact_path="report")
            return run.info.run_id
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {settings.tracking_uri}: {exc.message}") from exc
    except OSError as exc:
        raise RegistryError(f"MLflow at {settings.tracking_uri} is unreachable: {exc}") from exc

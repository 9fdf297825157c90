"""Shadow evaluation: the challenger scores recent live traffic next to the champion, without
serving it; its would-be decisions are logged and compared before promotion.

Reads the routed calls of a window from ``switchyard.calls.v1`` (the prompts the champion
actually routed), asks the challenger's own policy which model it would have chosen, and reports
the agreement with the serving router, the would-be relative cost and the escalation to the
strong model, overall and per task. Writes ``shadow.jsonl`` (one would-be decision per call) and
logs the summary to MLflow (a run tagged ``shadow_of=<version>``, and tags on that version).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from services.catalog import Catalog
from services.contracts import CallEvent

log = logging.getLogger(__name__)


class ShadowDecision(BaseModel):
    """One call: what served it and what the challenger would have chosen."""

    request_id: str
    task: str
    served_model: str
    served_router: str | None
    shadow_model: str
    shadow_router: str
    agree: bool
    served_relative_cost: float
    shadow_relative_cost: float


class ShadowSummary(BaseModel):
    calls: int
    agreement: float
    served_relative_cost: float
    shadow_relative_cost: float
    shadow_strong_share: float
    served_strong_share: float
    per_task: dict[str, dict[str, float]]


RATES = (
    "agreement",
    "served_relative_cost",
    "shadow_relative_cost",
    "shadow_strong_share",
    "served_strong_share",
)


def summarise(decisions: Sequence[ShadowDecision], strong_model: str) -> ShadowSummary:
    """Agreement and would-be cost (relative to always-strong), overall and per task."""

    def agg(ds: Sequence[ShadowDecision]) -> dict[str, float]:
        n = len(ds)
        return {
            "calls": float(n),
            "agreement": sum(d.agree for d in ds) / n,
            "served_relative_cost": sum(d.served_relative_cost for d in ds) / n,
            "shadow_relative_cost": sum(d.shadow_relative_cost for d in ds) / n,
            "shadow_strong_share": sum(d.shadow_model == strong_model for d in ds) / n,
            "served_strong_share": sum(d.served_model == strong_model for d in ds) / n,
        }

    if not decisions:
        return ShadowSummary(calls=0, per_task={}, **dict.fromkeys(RATES, float("nan")))
    tasks: dict[str, list[ShadowDecision]] = {}
    for d in decisions:
        tasks.setdefault(d.task, []).append(d)
    overall = agg(decisions)
    return ShadowSummary(
        calls=len(decisions),
        per_task={t: agg(v) for t, v in sorted(tasks.items())},
        **{k: overall[k] for k in RATES},
    )


def shadow_decisions(
    router,
    catalog: Catalog,
    calls: Sequence[CallEvent],
    quality_target: float,  # noqa: ANN001
    batch: int = 64,
) -> list[ShadowDecision]:
    """The challenger's would-be decision for every routed call that kept its prompt text."""
    from services.router.base import Query
    from services.router.policy import PolicyError, RoutingPolicy

    policy = RoutingPolicy(catalog, router.calibration)
    strong_price = catalog.blended_price(catalog.strong_model)
    usable = [
        c
        for c in calls
        if c.prompt
        and c.chosen_model
        and c.chosen_model in catalog.model_ids
        and c.mode in ("route", "hybrid", "cascade")
    ]
    out: list[ShadowDecision] = []
    for start in range(0, len(usable), batch):
        part = usable[start : start + batch]
        scores = router.scores([Query(c.prompt, c.task) for c in part])
        for c, s in zip(part, scores, strict=True):
            try:
                d = policy.decide(s, c.task, c.quality_target or quality_target)
            except PolicyError as exc:
                log.warning("shadow: cannot decide %s: %s", c.request_id, exc)
                continue
            out.append(
                ShadowDecision(
                    request_id=c.request_id,
                    task=c.task,
                    served_model=c.chosen_model,
                    served_router=c.router_version,
                    shadow_model=d.model,
                    shadow_router=router.version,
                    agree=d.model == c.chosen_model,
                    served_relative_cost=catalog.blended_price(c.chosen_model) / strong_price,
                    shadow_relative_cost=catalog.blended_price(d.model) / strong_price,
                )
            )
    return out


def log_shadow(mlflow_settings, version: str | None, summary: ShadowSummary, path: Path) -> str:  # noqa: ANN001
    """Log the summary as an MLflow run (tag ``shadow_of``); tag the registered version with it."""
    import mlflow

    from ..promote import tag_version

    mlflow.set_tracking_uri(mlflow_settings.tracking_uri)
    mlflow.set_experiment(mlflow_settings.experiment)
    with mlflow.start_run(run_name=f"shadow {version or ''}".strip()) as run:
        mlflow.set_tags({"shadow_of": str(version)})
        metrics: dict[str, Any] = {
            k: v for k, v in summary.model_dump().items() if isinstance(v, float | int)
        }
        for t, m in summary.per_task.items():
            metrics.update({f"task.{t}.{k}": v for k, v in m.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
        mlflow.log_artifact(str(path), artifact_path="shadow")
    if version is not None:
        tag_version(
            mlflow_settings,
            version,
            {
                "shadow_agreement": f"{summary.agreement:.4f}",
                "shadow_relative_cost": f"{summary.shadow_relative_cost:.4f}",
                "shadow_calls": summary.calls,
            },
        )
    return run.info.run_id


def write_decisions(decisions: Sequence[ShadowDecision], summary: ShadowSummary, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for d in decisions:
            fh.write(d.model_dump_json() + "\n")
    path.with_suffix(".summary.json").write_text(json.dumps(summary.model_dump(), indent=1), encoding="utf-8")
    return path

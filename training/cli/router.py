"""``switchyard router ...``: the router artefact — score and route (the outside contract, see
DESIGN.md), check, promote, rollback. Producing routers is ``switchyard train``.

Heavy imports (torch, mlflow, pandas) happen inside the commands so ``switchyard --help`` is fast.
Errors a user can cause (bad input, bad model ref, unreachable MLflow) print one clear line and
exit non-zero.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from .common import fail

router_app = typer.Typer(
    no_args_is_help=True, help="The router artefact: score, route, check, promote, roll back."
)

UNTAGGED_TASK = "default"  # what the gateway calls a request without a task tag


def _read_score_inputs(input_: Path) -> list:  # noqa: ANN401 - list[ScoreInput]
    """The contract's input lines, validated; a bad line fails with its number."""
    from pydantic import ValidationError

    from services.router.contract import ScoreInput

    if not input_.is_file():
        raise fail(f"input file {input_} does not exist")
    rows: list[ScoreInput] = []
    with input_.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(ScoreInput.model_validate_json(line))
            except ValidationError as exc:
                errs = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors()
                )
                raise fail(f"{input_}:{n}: invalid input line ({errs})") from exc
    return rows


def _load_contract_router(model: str, tracking_uri: str | None, device: str | None):  # noqa: ANN202
    from services.contracts.settings import MLflowSettings
    from services.router.artifact import RouterLoadError, load_router

    uri = tracking_uri or MLflowSettings().tracking_uri
    try:
        return load_router(model, tracking_uri=uri, device=device)
    except RouterLoadError as exc:
        raise fail(f"cannot load router {model!r}: {exc}", 1) from exc


def _candidates(value: str, router, minimum: int) -> list[str]:  # noqa: ANN001
    names = [c.strip() for c in value.split(",") if c.strip()]
    if len(names) < minimum or len(set(names)) != len(names):
        raise fail(f"--candidates needs at least {minimum} distinct model ids, got {value!r}")
    unknown = [c for c in names if c not in router.models]
    if unknown:
        raise fail(f"--candidates: models {unknown} are not scored by router {router.version}")
    return names


def _write_jsonl(output: Path, lines) -> None:  # noqa: ANN001 - an iterable of dicts
    """Write atomically: the output appears whole or not at all."""
    tmp = output.with_name(output.name + ".part")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for line in lines:
                out.write(json.dumps(line) + "\n")
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()


@router_app.command("score")
def score_cmd(
    model: str = typer.Option(
        ..., "--model", help="Router: a local artefact dir or models:/name@alias, models:/name/N."
    ),
    input_: Path = typer.Option(  # noqa: B008
        ..., "--input", help='JSONL, one {"id": str, "prompt": str, "task": str|null} per line.'
    ),
    output: Path = typer.Option(  # noqa: B008
        ..., "--output", help='JSONL, one {"id", "scores": {model: P}, "router_version"} per line.'
    ),
    candidates: str = typer.Option(
        None,
        help='STRONG,CHEAP: each line also gets "escalate", the policy\'s preference for STRONG '
        "(higher = more in need of it), what the gateway ranks by for these two and no task tag.",
    ),
    batch_size: int = typer.Option(64, min=1, help="Queries per encoder batch."),
    tracking_uri: str = typer.Option(
        None, help="MLflow tracking URI (default SWITCHYARD_MLFLOW_TRACKING_URI)."
    ),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
) -> None:
    """Score prompts with a router (the scoring contract used by outside evaluation)."""
    from services.router.artifact import RouterLoadError
    from services.router.base import Query
    from services.router.policy import escalation

    rows = _read_score_inputs(input_)
    router = _load_contract_router(model, tracking_uri, device)
    pair = _candidates(candidates, router, 2) if candidates else None
    if pair and len(pair) != 2:
        raise fail("--candidates for score takes exactly two models: STRONG,CHEAP")
    t0 = time.perf_counter()

    def lines():  # noqa: ANN202
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            scores = router.scores([Query(r.prompt, r.task) for r in part])
            untagged = scores
            if pair and any(r.task is not None for r in part):
                untagged = router.scores([Query(r.prompt, None) for r in part])  # embeddings cached
            for r, s, u in zip(part, scores, untagged, strict=True):
                line = {"id": r.id, "scores": s, "router_version": router.version}
                if pair:
                    rule = router.calibration.rule
                    line["escalate"] = float(escalation(u[pair[0]], u[pair[1]], rule))
                yield line

    try:
        _write_jsonl(output, lines())
    except RouterLoadError as exc:
        raise fail(f"router {model!r} cannot score: {exc}", 1) from exc
    dt = time.perf_counter() - t0
    typer.echo(f"scored {len(rows)} prompts with {router.version} in {dt:.1f}s -> {output}", err=True)


@router_app.command("route")
def route_cmd(
    model: str = typer.Option(..., "--model", help="Router: a local artefact dir or models:/name@alias."),
    input_: Path = typer.Option(  # noqa: B008
        ..., "--input", help='JSONL, one {"id": str, "prompt": str, "task": str|null} per line.'
    ),
    output: Path = typer.Option(  # noqa: B008
        ..., "--output", help='JSONL, one {"id", "model", "router_version"} per line.'
    ),
    candidates: str = typer.Option(..., help="A,B[,...]: the models the policy chooses between."),
    quality_target: float = typer.Option(0.95, min=0.0, max=1.0, help="Share of the strong model's quality."),
    catalog: Path = typer.Option(None, help="Catalog YAML (default: the built-in one)."),  # noqa: B008
    batch_size: int = typer.Option(64, min=1, help="Queries per encoder batch."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
) -> None:
    """The gateway's routing decision per prompt, with no task tag (a task in the input is ignored)."""
    from services.catalog import CatalogError, load_catalog
    from services.router.artifact import RouterLoadError
    from services.router.base import Query
    from services.router.policy import PolicyError, RoutingPolicy

    rows = _read_score_inputs(input_)
    try:
        cat = load_catalog(catalog)
    except CatalogError as exc:
        raise fail(str(exc)) from exc
    router = _load_contract_router(model, tracking_uri, device)
    pool = _candidates(candidates, router, 1)
    missing = [m for m in pool if m not in cat.model_ids]
    if missing:
        raise fail(f"--candidates: models {missing} are not in the catalog")
    policy = RoutingPolicy(cat, router.calibration)
    t0 = time.perf_counter()

    def lines():  # noqa: ANN202
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            # the gateway's task for an untagged request
            scores = router.scores([Query(r.prompt, UNTAGGED_TASK) for r in part])
            for r, s in zip(part, scores, strict=True):
                d = policy.decide(s, UNTAGGED_TASK, quality_target, None, pool)
                yield {"id": r.id, "model": d.model, "router_version": router.version}

    try:
        _write_jsonl(output, lines())
    except (RouterLoadError, PolicyError) as exc:
        raise fail(f"router {model!r} cannot route: {exc}", 1) from exc
    dt = time.perf_counter() - t0
    typer.echo(f"routed {len(rows)} prompts with {router.version} in {dt:.1f}s -> {output}", err=True)


WAIT_HELP = (
    "champion only: then wait until the gateway (--gateway-url) reports serving the new version in "
    "/readyz; prints JSON, exit 1 when it refuses it or does not report it in time."
)


def _gateway_url(url: str | None) -> str:
    from ..settings import TrainSettings

    return url or TrainSettings().gateway_url or "http://127.0.0.1:8000"


def _report_wait(ms, alias: str, v: str, gateway_url: str) -> None:  # noqa: ANN001
    """Wait for the gateway to serve ``v`` (its replicas follow the alias); JSON out, exit 1 if not."""
    from ..promote import router_version_of, version_ref, wait_serving

    if alias != "champion":
        raise fail("--wait follows champion only (the alias the gateway serves)")
    res = wait_serving(gateway_url, version_ref(ms, v), router_version_of(ms, v))
    typer.echo(json.dumps({"champion_version": v, "serving": res.model_dump()}, indent=1))
    if not res.swapped:
        raise typer.Exit(1)


@router_app.command("promote")
def promote_cmd(
    version: str = typer.Option(None, help="Version to promote (default: the one behind --from-alias)."),
    from_alias: str = typer.Option("challenger", help="Alias whose version is promoted."),
    to_alias: str = typer.Option("champion", help="Alias to move."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Promote even without a passed gate record or when the artefact fails verification "
        "(recorded on the version as the tag forced_promotion).",
    ),
    wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
    gateway_url: str = typer.Option(
        None, help="The gateway's base URL (default SWITCHYARD_TRAIN_GATEWAY_URL or http://127.0.0.1:8000)."
    ),
) -> None:
    """Move the ``champion`` alias (to the challenger by default); the gateway's replicas follow
    it at their next poll.

    The version must carry a passed gate record (the retrain loop's verdict against the champion,
    or, for the first router of a registered model, its bootstrap pass) and verify: downloaded,
    loaded with its content hashes checked and smoke-checked. Otherwise it is refused (exit 1)
    unless ``--force``."""
    from services.contracts.settings import MLflowSettings

    from ..promote import promote_checked
    from ..registry import RegistryError

    ms = MLflowSettings()
    try:
        v, check = promote_checked(ms, version=version, from_alias=from_alias, to_alias=to_alias, force=force)
    except RegistryError as exc:
        raise fail(str(exc), 1) from exc
    if v is None:
        raise fail(f"refusing to promote {check.summary()}; pass --force to promote it anyway", 1)
    if not check.ok:
        typer.echo(f"warning: forced: {check.summary()}", err=True)
    typer.echo(f"models:/{ms.registered_model}@{to_alias} -> version {v}")
    if wait:
        _report_wait(ms, to_alias, v, _gateway_url(gateway_url))


@router_app.command("rollback")
def rollback_cmd(
    alias: str = typer.Option("champion", help="Alias to move back."),
    wait: bool = typer.Option(False, "--wait", "--redeploy", help=WAIT_HELP),
    gateway_url: str = typer.Option(
        None, help="The gateway's base URL (default SWITCHYARD_TRAIN_GATEWAY_URL or http://127.0.0.1:8000)."
    ),
) -> None:
    """Move ``champion`` back to the version it had before the last promotion; the gateway's
    replicas follow the alias at their next poll."""
    from services.contracts.settings import MLflowSettings

    from ..registry import RegistryError, rollback

    ms = MLflowSettings()
    try:
        v = rollback(ms, alias=alias)
    except RegistryError as exc:
        raise fail(str(exc), 1) from exc
    typer.echo(f"models:/{ms.registered_model}@{alias} -> version {v}")
    if wait:
        _report_wait(ms, alias, v, _gateway_url(gateway_url))

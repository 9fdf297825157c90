"""``switchyard train ...``: the closed loop — worker, on-demand run, request, status, rollback."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import typer

log = logging.getLogger(__name__)

train_app = typer.Typer(
    no_args_is_help=True, help="The closed loop: distil, retrain, gate, promote, redeploy."
)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {msg}", fg="red", err=True)
    return typer.Exit(code)


def _context(no_kafka: bool = False, data_dir: Path | None = None):  # noqa: ANN202
    from services.contracts.settings import DataSettings, KafkaSettings, MLflowSettings

    from .cli import _data_dir
    from .loop_settings import LoopSettings
    from .settings import TrainingSettings
    from .worker import LoopContext

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _ = DataSettings
    loop = LoopSettings()
    return LoopContext(
        loop=loop,
        mlflow=MLflowSettings(),
        kafka=None if no_kafka else KafkaSettings(),
        data_dir=_data_dir(data_dir),
        state_dir=TrainingSettings().state_dir,
        catalog_path=loop.catalog,
    )


def _print_run(state) -> None:  # noqa: ANN001
    v = state.verdict or {}
    typer.echo(
        json.dumps(
            {
                "run_id": state.run_id,
                "status": state.status,
                "tasks": state.tasks,
                "requests": len(state.request_ids),
                "router_version": state.router_version,
                "model_version": state.model_version,
                "champion_before": state.champion_version,
                "gate": v.get("passed"),
                "reasons": v.get("reasons"),
                "promoted": state.promoted,
                "redeploy": state.redeploy,
                "distill": {
                    k: state.distill.get(k)
                    for k in (
                        "labelled_queries",
                        "labels",
                        "calls",
                        "spent_usd",
                        "finetune_examples",
                        "finetune_path",
                    )
                },
                "timings": {k: round(x, 1) for k, x in state.timings.items()},
                "error": state.error,
            },
            indent=1,
            default=str,
        )
    )


@train_app.command("run")
def run_cmd(
    reason: str = typer.Option(..., help="Why (logged with the run)."),
    tasks: str = typer.Option("", help="Comma-separated drifting tasks the challenger must repair."),
    window_s: float = typer.Option(
        None, help="Look-back for outcomes/hard queries (default SWITCHYARD_TRAIN_WINDOW_S)."
    ),
    no_kafka: bool = typer.Option(
        False, "--no-kafka", help="Bootstrap data only (no outcomes/hard queries)."
    ),
    no_promote: bool = typer.Option(
        False, "--no-promote", help="Gate and register, but never move champion."
    ),
    data_dir: Path = typer.Option(None, help="Benchmark data (default SWITCHYARD_DATA_DIR)."),  # noqa: B008
) -> None:
    """Run the loop once now, in this process; prints the run (exit 1 when the gate fails)."""
    from datetime import UTC, datetime, timedelta

    from services.contracts import RetrainRequest

    from .worker import run_requests

    ctx = _context(no_kafka, data_dir)
    if no_promote:
        ctx.loop = ctx.loop.model_copy(update={"auto_promote": False})
    now = datetime.now(UTC)
    req = RetrainRequest(
        reason=reason,
        source="operator",
        tasks=[t.strip() for t in tasks.split(",") if t.strip()],
        window_start=now - timedelta(seconds=window_s) if window_s else None,
        window_end=now,
    )
    try:
        runs, decisions = run_requests(ctx, [req])
    except Exception as exc:  # noqa: BLE001 - the run state keeps the details
        raise _fail(f"run failed: {type(exc).__name__}: {exc}", 1) from exc
    for s in runs:
        _print_run(s)
    if runs and not (runs[0].verdict or {}).get("passed"):
        raise typer.Exit(1)


@train_app.command("worker")
def worker_cmd(
    idle_exit_s: float = typer.Option(
        None, help="Exit after this long without requests (default: run forever)."
    ),
    max_runs: int = typer.Option(None, help="Exit after this many runs."),
) -> None:
    """Consume switchyard.retrain.v1 and run the loop for each (coalesced) request; resumes
    unfinished runs at start; retrains on SWITCHYARD_TRAIN_SCHEDULE_S if set."""
    import signal

    from .worker import consume

    ctx = _context()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runs = await consume(ctx, stop=stop, idle_exit_s=idle_exit_s, max_runs=max_runs)
        for s in runs:
            _print_run(s)

    asyncio.run(main())


@train_app.command("request")
def request_cmd(
    reason: str = typer.Option(..., help="Why."),
    tasks: str = typer.Option("", help="Comma-separated tasks."),
) -> None:
    """Publish a retrain request on switchyard.retrain.v1 (what streams does on a drift alert)."""
    from services.contracts import RetrainRequest
    from services.contracts.settings import KafkaSettings

    from .worker import publish_request

    req = RetrainRequest(
        reason=reason, source="operator", tasks=[t.strip() for t in tasks.split(",") if t.strip()]
    )
    asyncio.run(publish_request(KafkaSettings(), req))
    typer.echo(req.retrain_id)


@train_app.command("status")
def status_cmd(last: int = typer.Option(5, help="How many recent runs.")) -> None:
    """The most recent runs of the loop (state under <state_dir>/loop)."""
    from .settings import TrainingSettings
    from .worker import RunStore

    for s in RunStore(TrainingSettings().state_dir / "loop").all()[-last:]:
        _print_run(s)


@train_app.command("rollback")
def rollback_cmd(
    no_redeploy: bool = typer.Option(False, "--no-redeploy", help="Only move the alias."),
) -> None:
    """Move champion back to the previous version and hot-swap the running gateway to it."""
    from services.contracts.settings import MLflowSettings

    from .promote import rollback_and_redeploy
    from .registry import RegistryError

    try:
        v, res = rollback_and_redeploy(MLflowSettings(), do_redeploy=not no_redeploy)
    except RegistryError as exc:
        raise _fail(str(exc), 1) from exc
    typer.echo(json.dumps({"champion_version": v, "redeploy": res.model_dump() if res else None}, indent=1))
    if res is not None and not res.swapped and "no running gateway" not in (res.error or ""):
        raise typer.Exit(1)


@train_app.command("shadow")
def shadow_cmd(
    model: str = typer.Option("", help="Router to shadow (default: models:/<registered>@challenger)."),
    window_s: float = typer.Option(3600.0, help="Routed calls of the last this many seconds."),
    max_calls: int = typer.Option(2000, help="At most this many (newest) calls."),
    out: Path = typer.Option(None, help="Decisions JSONL (default <state>/loop/shadow/<version>.jsonl)."),  # noqa: B008
) -> None:
    """Shadow mode: the challenger scores recent live traffic next to the serving router, without
    serving; its would-be decisions are written and compared (agreement, would-be cost), logged to MLflow."""
    from datetime import UTC, datetime, timedelta

    from services.catalog import load_catalog
    from services.contracts.settings import KafkaSettings, MLflowSettings
    from services.contracts.topics import CALLS
    from services.router.artifact import RouterLoadError, load_router

    from .collect import read_topic
    from .loop_settings import LoopSettings
    from .promote import alias_version
    from .settings import TrainingSettings
    from .shadow import log_shadow, shadow_decisions, summarise, write_decisions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ms, kafka, loop = MLflowSettings(), KafkaSettings(), LoopSettings()
    version = None
    ref = model
    if not ref:
        version = alias_version(ms, "challenger")
        if version is None:
            raise _fail(f"{ms.registered_model} has no @challenger; pass --model", 1)
        ref = f"models:/{ms.registered_model}/{version}"
    try:
        router = load_router(ref, tracking_uri=ms.tracking_uri)
    except RouterLoadError as exc:
        raise _fail(f"cannot load {ref}: {exc}", 1) from exc
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    window = asyncio.run(
        read_topic(kafka.bootstrap, CALLS, kafka.topic_prefix, since=since, until=None, max_records=max_calls)
    )
    catalog = load_catalog(loop.catalog)
    decisions = shadow_decisions(router, catalog, window.events, loop.quality_target)  # type: ignore[arg-type]
    summary = summarise(decisions, catalog.strong_model)
    path = out or TrainingSettings().state_dir / "loop" / "shadow" / f"{router.version}.jsonl"
    write_decisions(decisions, summary, path)
    run_id = log_shadow(ms, version, summary, path) if decisions else None
    typer.echo(
        json.dumps(
            {
                "router": router.version,
                "calls_read": window.read,
                "decisions": len(decisions),
                "summary": summary.model_dump(),
                "file": str(path),
                "mlflow_run": run_id,
            },
            indent=1,
        )
    )

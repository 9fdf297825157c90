"""``switchyard train ...``: producing routers.

- ``train router``: one router from the bootstrap benchmark data (what ``make router`` runs);
- the closed loop: ``run`` (one run now), ``worker`` (consume ``switchyard.retrain.v1``),
  ``request`` (publish one), ``status``, ``shadow`` (a challenger on recent live traffic);
- ``train eval ...``: offline evaluations (:mod:`training.cli.evaluate`).

Heavy imports happen inside the commands so ``switchyard --help`` is fast.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import typer

from .common import benchmark, csv, fail, log_to_stderr, resolve_data_dir
from .evaluate import eval_app

train_app = typer.Typer(
    no_args_is_help=True,
    help="Produce routers: train one from the benchmarks, or run the closed loop "
    "(distil, retrain, gate, promote, redeploy).",
)
train_app.add_typer(eval_app, name="eval", help="Offline evaluations: router kinds and rules, fine-tuning.")


@train_app.command("router")
def router_cmd(
    kind: str = typer.Option(
        "mlp", help="Router kind: random, knn, mf, mlp, finetune (fine-tunes the encoder)."
    ),
    datasets: str = typer.Option("mmlu,gsm8k,routerbench", help="Comma-separated: mmlu, gsm8k, routerbench."),
    out: Path = typer.Option(None, help="Artefact directory (default <state>/routers/<version>)."),  # noqa: B008
    max_rows: int = typer.Option(None, help="Subsample each dataset to at most this many rows (quick runs)."),
    epochs: int = typer.Option(None, help="Override the head's training epochs."),
    max_length: int = typer.Option(128, help="Encoder truncation (tokens, head+tail)."),
    int8: bool = typer.Option(False, "--int8", help="int8 dynamic quantisation of the encoder (CPU)."),
    backend: str = typer.Option(
        "torch",
        help="Encoder backend: torch, onnx (ONNX Runtime, CPU) or static (MiniLM distilled by model2vec).",
    ),
    static_pca_dims: int = typer.Option(
        256, min=0, max=384, help="static backend: PCA dimensions of the distilled table (0: all 384)."
    ),
    register: bool = typer.Option(
        False, "--register", help="Log to MLflow and register a version (alias challenger)."
    ),
    promote_: bool = typer.Option(
        False,
        "--promote",
        help="With --register: also make it champion (the first router of a model; later ones must "
        "pass the loop's gate, or --force).",
    ),
    force: bool = typer.Option(False, "--force", help="With --promote: promote even an ungated version."),
    alias: str = typer.Option("challenger", help="Alias set by --register."),
    catalog: Path = typer.Option(None, help="Catalog YAML (default: the built-in one)."),  # noqa: B008
    data_dir: Path = typer.Option(None, help="Benchmark data (default SWITCHYARD_DATA_DIR)."),  # noqa: B008
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    top_layers: int = typer.Option(1, min=1, max=6, help="finetune: trainable top encoder layers (6 = all)."),
    rule: str = typer.Option(
        "gap", help="Routing rule to serve: gap, absolute, need (gap won leave-tasks-out)."
    ),
    cold_start_coverage: float = typer.Option(
        0.0,
        min=0.0,
        max=1.0,
        help="Share of held-out tasks that must each keep the target in the cold-start table (0: pooled).",
    ),
) -> None:
    """Train a router on the bootstrap data; print its model reference."""
    import shutil
    import tempfile

    from services.catalog import CatalogError, load_catalog
    from services.contracts.settings import MLflowSettings
    from services.router.encoder import EncoderConfig, weights_sha256

    from ..promote import promote_checked
    from ..registry import RegistryError, log_run
    from ..settings import TrainSettings
    from ..train import KINDS, TrainConfig, prepare, train_router

    if kind not in (*KINDS, "finetune"):
        raise fail(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    try:
        cat = load_catalog(catalog)
    except CatalogError as exc:
        raise fail(str(exc)) from exc
    settings = TrainSettings()
    bench = benchmark(data_dir, csv(datasets), max_rows)
    models = [m for m in bench.models if m in cat.model_ids]
    from services.router.policy import RULES

    if rule not in RULES:
        raise fail(f"unknown rule {rule!r} (known: {', '.join(RULES)})")
    cfg = TrainConfig(
        kind=kind,
        device=device,
        rule=rule,
        cold_start_coverage=cold_start_coverage,
        **({"epochs": epochs} if epochs else {}),
    )
    try:
        enc_cfg = EncoderConfig(
            max_length=max_length, quantize_int8=int8, backend=backend, static_pca_dims=static_pca_dims
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if kind == "finetune" and backend == "static":
        raise fail("--kind finetune fine-tunes MiniLM: it cannot use the static backend")
    t0 = time.perf_counter()
    ts = prepare(bench, settings.cache_dir, enc_cfg, models, device=device)
    t_embed = time.perf_counter() - t0
    enc_sha = weights_sha256()
    tmp = Path(tempfile.mkdtemp(prefix="router-", dir=str(settings.state_dir)))
    try:
        if kind == "finetune":
            from ..finetune import FinetuneConfig, train_finetuned_router

            ft = FinetuneConfig(
                top_layers=top_layers, device=device, **({"epochs": epochs} if epochs else {})
            )
            manifest, metrics = train_finetuned_router(
                ts,
                ft,
                cat,
                tmp,
                encoder=enc_cfg,
                encoder_sha=enc_sha,
                cache_dir=settings.cache_dir,
                calibration_folds=cfg.calibration_folds,
                cascade_model=cfg.cascade_model,
                extra={"embed_seconds": t_embed},
            )
        else:
            manifest, metrics = train_router(
                ts,
                cfg,
                cat,
                tmp,
                encoder=enc_cfg,
                encoder_sha=enc_sha,
                extra={"embed_seconds": t_embed},
                static_cache_dir=settings.state_dir / "cache" / "static",
            )
        dest = out or settings.routers_dir / manifest.version
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    metrics["embed_seconds"] = t_embed
    typer.echo(
        f"trained {manifest.version} on {len(ts.frame)} rows: embeddings {t_embed:.1f}s, "
        f"heads+calibration {metrics['train_seconds']:.1f}s -> {dest}"
    )
    ref = str(dest.resolve())
    if register:
        ms = MLflowSettings()
        try:
            reg = log_run(
                ms,
                dest,
                manifest,
                {
                    "train": cfg.model_dump(),
                    "encoder": enc_cfg.to_dict(),
                    "datasets": datasets,
                    "max_rows": max_rows,
                },
                metrics,
                register=True,
                alias=alias,
            )
            ref = reg.ref
            if promote_:
                promoted, check = promote_checked(ms, version=reg.version, force=force)
                if promoted is None:
                    raise fail(
                        f"registered version {reg.version} as {alias}, but refusing to promote "
                        f"{check.summary()}; run the retrain loop's gate, or pass --force",
                        1,
                    )
                ref = f"models:/{ms.registered_model}@champion"
                typer.echo(f"version {reg.version} is now champion")
        except RegistryError as exc:
            raise fail(str(exc), 1) from exc
    elif promote_:
        raise fail("--promote needs --register")
    typer.echo(ref)


def _context(no_kafka: bool = False, data_dir: Path | None = None):  # noqa: ANN202
    from services.contracts.settings import KafkaSettings, MLflowSettings

    from ..loop.run import LoopContext
    from ..settings import TrainSettings

    log_to_stderr()
    settings = TrainSettings()
    return LoopContext(
        settings=settings,
        mlflow=MLflowSettings(),
        kafka=None if no_kafka else KafkaSettings(),
        data_dir=resolve_data_dir(data_dir),
        state_dir=settings.state_dir,
        catalog_path=settings.catalog,
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
                        "finetune_per_task",
                        "finetune_tokens",
                        "finetune_path",
                        "artifact",
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

    from ..loop.run import run_requests

    ctx = _context(no_kafka, data_dir)
    if no_promote:
        ctx.settings = ctx.settings.model_copy(update={"auto_promote": False})
    now = datetime.now(UTC)
    req = RetrainRequest(
        reason=reason,
        source="operator",
        tasks=csv(tasks),
        window_start=now - timedelta(seconds=window_s) if window_s else None,
        window_end=now,
    )
    try:
        runs, decisions = run_requests(ctx, [req])
    except Exception as exc:  # noqa: BLE001 - the run state keeps the details
        raise fail(f"run failed: {type(exc).__name__}: {exc}", 1) from exc
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

    from ..loop.worker import consume

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

    from ..loop.worker import publish_request

    req = RetrainRequest(reason=reason, source="operator", tasks=csv(tasks))
    asyncio.run(publish_request(KafkaSettings(), req))
    typer.echo(req.retrain_id)


@train_app.command("status")
def status_cmd(last: int = typer.Option(5, help="How many recent runs.")) -> None:
    """The most recent runs of the loop (state under <state_dir>/loop)."""
    from ..loop.state import RunStore
    from ..settings import TrainSettings

    for s in RunStore(TrainSettings().loop_dir).all()[-last:]:
        _print_run(s)


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

    from ..collect import read_topic
    from ..evaluation.shadow import log_shadow, shadow_decisions, summarise, write_decisions
    from ..promote import alias_version
    from ..settings import TrainSettings

    log_to_stderr()
    ms, kafka, settings = MLflowSettings(), KafkaSettings(), TrainSettings()
    version = None
    ref = model
    if not ref:
        version = alias_version(ms, "challenger")
        if version is None:
            raise fail(f"{ms.registered_model} has no @challenger; pass --model", 1)
        ref = f"models:/{ms.registered_model}/{version}"
    try:
        router = load_router(ref, tracking_uri=ms.tracking_uri)
    except RouterLoadError as exc:
        raise fail(f"cannot load {ref}: {exc}", 1) from exc
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    window = asyncio.run(
        read_topic(kafka.bootstrap, CALLS, kafka.topic_prefix, since=since, until=None, max_records=max_calls)
    )
    catalog = load_catalog(settings.catalog)
    decisions = shadow_decisions(router, catalog, window.events, settings.quality_target)  # type: ignore[arg-type]
    summary = summarise(decisions, catalog.strong_model)
    path = out or settings.loop_dir / "shadow" / f"{router.version}.jsonl"
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

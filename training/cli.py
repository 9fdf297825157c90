"""``switchyard router ...``: train, eval, score (the outside contract), promote, rollback.

Heavy imports (torch, mlflow, pandas) happen inside the commands so ``switchyard --help`` is fast.
Errors a user can cause (bad input, bad model ref, unreachable MLflow) print one clear line and
exit non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import typer

log = logging.getLogger(__name__)

router_app = typer.Typer(no_args_is_help=True, help="The learned router: train, evaluate, score, register.")

DATASETS = ("mmlu", "gsm8k", "routerbench")
UNTAGGED_TASK = "default"  # what the gateway calls a request without a task tag


def _fail(msg: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {msg}", fg="red", err=True)
    return typer.Exit(code)


def _data_dir(data_dir: Path | None) -> Path:
    from services.contracts.settings import DataSettings

    path = data_dir or DataSettings().data_dir
    if not (path / "routellm").exists() and not (path / "routerbench").exists():
        sibling = Path.cwd().parent / "shared" / "data"
        if data_dir is None and (sibling / "routellm").exists():
            return sibling
        raise _fail(f"no benchmark data under {path}; set SWITCHYARD_DATA_DIR or pass --data-dir")
    return path


def load_benchmark(data_dir: Path, datasets: list[str], max_rows: int | None = None, seed: int = 0):  # noqa: ANN201
    """The chosen datasets in one table (optionally a deterministic per-dataset subsample)."""
    import pandas as pd

    from .data import Benchmark, load_gsm8k, load_mmlu, load_routerbench

    loaders = {"mmlu": load_mmlu, "gsm8k": load_gsm8k, "routerbench": load_routerbench}
    bad = [d for d in datasets if d not in loaders]
    if bad:
        raise _fail(f"unknown datasets {bad} (known: {list(loaders)})")
    frames = [loaders[d](data_dir).frame for d in datasets]
    if max_rows:
        frames = [f.sample(n=min(len(f), max_rows), random_state=seed) for f in frames]
    frame = pd.concat(frames, ignore_index=True)
    label_cols = [c for c in frame.columns if c.startswith("label:")]
    frame = frame[[c for c in frame.columns if not c.startswith("label:")] + label_cols]
    return Benchmark(frame.reset_index(drop=True))


@router_app.command("train")
def train_cmd(
    kind: str = typer.Option(
        "mlp", help="Router kind: random, knn, mf, mlp, finetune (fine-tunes the encoder)."
    ),
    datasets: str = typer.Option(",".join(DATASETS), help="Comma-separated: mmlu, gsm8k, routerbench."),
    out: Path = typer.Option(None, help="Artefact directory (default <state>/routers/<version>)."),  # noqa: B008
    max_rows: int = typer.Option(None, help="Subsample each dataset to at most this many rows (quick runs)."),
    epochs: int = typer.Option(None, help="Override the head's training epochs."),
    max_length: int = typer.Option(128, help="Encoder truncation (tokens, head+tail)."),
    int8: bool = typer.Option(False, "--int8", help="int8 dynamic quantisation of the encoder (CPU)."),
    backend: str = typer.Option("torch", help="Encoder backend: torch or onnx (ONNX Runtime, CPU)."),
    register: bool = typer.Option(
        False, "--register", help="Log to MLflow and register a version (alias challenger)."
    ),
    promote_: bool = typer.Option(False, "--promote", help="With --register: also make it champion."),
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

    from .registry import RegistryError, log_run, promote
    from .settings import TrainingSettings
    from .train import KINDS, TrainConfig, prepare, train_router

    if kind not in (*KINDS, "finetune"):
        raise _fail(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    try:
        cat = load_catalog(catalog)
    except CatalogError as exc:
        raise _fail(str(exc)) from exc
    settings = TrainingSettings()
    bench = load_benchmark(
        _data_dir(data_dir), [d.strip() for d in datasets.split(",") if d.strip()], max_rows
    )
    models = [m for m in bench.models if m in cat.model_ids]
    from services.router.policy import RULES

    if rule not in RULES:
        raise _fail(f"unknown rule {rule!r} (known: {', '.join(RULES)})")
    cfg = TrainConfig(
        kind=kind,
        device=device,
        rule=rule,
        cold_start_coverage=cold_start_coverage,
        **({"epochs": epochs} if epochs else {}),
    )
    try:
        enc_cfg = EncoderConfig(max_length=max_length, quantize_int8=int8, backend=backend)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    t0 = time.perf_counter()
    ts = prepare(bench, settings.cache_dir, enc_cfg, models, device=device)
    t_embed = time.perf_counter() - t0
    enc_sha = weights_sha256()
    tmp = Path(tempfile.mkdtemp(prefix="router-", dir=str(settings.state_dir)))
    try:
        if kind == "finetune":
            from .finetune import FinetuneConfig, train_finetuned_router

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
                ts, cfg, cat, tmp, encoder=enc_cfg, encoder_sha=enc_sha, extra={"embed_seconds": t_embed}
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
                promote(ms, version=reg.version)
                ref = f"models:/{ms.registered_model}@champion"
                typer.echo(f"version {reg.version} is now champion")
        except RegistryError as exc:
            raise _fail(str(exc), 1) from exc
    elif promote_:
        raise _fail("--promote needs --register")
    typer.echo(ref)


def _read_score_inputs(input_: Path) -> list:  # noqa: ANN401 - list[ScoreInput]
    """The contract's input lines, validated; a bad line fails with its number."""
    from pydantic import ValidationError

    from services.router.contract import ScoreInput

    if not input_.is_file():
        raise _fail(f"input file {input_} does not exist")
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
                raise _fail(f"{input_}:{n}: invalid input line ({errs})") from exc
    return rows


def _load_contract_router(model: str, tracking_uri: str | None, device: str | None):  # noqa: ANN202
    from services.contracts.settings import MLflowSettings
    from services.router.artifact import RouterLoadError, load_router

    uri = tracking_uri or MLflowSettings().tracking_uri
    try:
        return load_router(model, tracking_uri=uri, device=device)
    except RouterLoadError as exc:
        raise _fail(f"cannot load router {model!r}: {exc}", 1) from exc


def _candidates(value: str, router, minimum: int) -> list[str]:  # noqa: ANN001
    names = [c.strip() for c in value.split(",") if c.strip()]
    if len(names) < minimum or len(set(names)) != len(names):
        raise _fail(f"--candidates needs at least {minimum} distinct model ids, got {value!r}")
    unknown = [c for c in names if c not in router.models]
    if unknown:
        raise _fail(f"--candidates: models {unknown} are not scored by router {router.version}")
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
        raise _fail("--candidates for score takes exactly two models: STRONG,CHEAP")
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
        raise _fail(f"router {model!r} cannot score: {exc}", 1) from exc
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
        raise _fail(str(exc)) from exc
    router = _load_contract_router(model, tracking_uri, device)
    pool = _candidates(candidates, router, 1)
    missing = [m for m in pool if m not in cat.model_ids]
    if missing:
        raise _fail(f"--candidates: models {missing} are not in the catalog")
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
        raise _fail(f"router {model!r} cannot route: {exc}", 1) from exc
    dt = time.perf_counter() - t0
    typer.echo(f"routed {len(rows)} prompts with {router.version} in {dt:.1f}s -> {output}", err=True)


@router_app.command("eval")
def eval_cmd(
    out: Path = typer.Option(None, help="Report directory (default reports/router)."),  # noqa: B008
    kinds: str = typer.Option("random,knn,mf,mlp", help="Routers to evaluate."),
    folds: int = typer.Option(5, min=2, help="Random (by prompt hash) out-of-fold folds."),
    grouped_folds: int = typer.Option(10, min=2, help="Leave-tasks-out folds."),
    bootstrap: int = typer.Option(200, min=0, help="Bootstrap resamples for intervals."),
    rules: str = typer.Option("gap,absolute,need", help="Routing rules to evaluate."),
    max_length: int = typer.Option(128, help="Encoder truncation (tokens)."),
    int8: bool = typer.Option(False, "--int8", help="int8 dynamic quantisation of the encoder (CPU)."),
    backend: str = typer.Option("torch", help="Encoder backend: torch or onnx (ONNX Runtime, CPU)."),
    data_dir: Path = typer.Option(None, help="Benchmark data (default SWITCHYARD_DATA_DIR)."),  # noqa: B008
    log_mlflow: bool = typer.Option(False, "--mlflow", help="Also log the report to MLflow."),
) -> None:
    """Evaluate every router kind and rule, leave-tasks-out first: share@95, APGR, CPT, realized
    quality vs target, RouterBench savings, cascade."""
    from services.catalog import load_catalog
    from services.router.encoder import EncoderConfig

    from .evaluate import EvalConfig, run_evaluation
    from .settings import TrainingSettings

    try:
        enc_cfg = EncoderConfig(max_length=max_length, quantize_int8=int8, backend=backend)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    settings = TrainingSettings()
    cfg = EvalConfig(
        kinds=[k.strip() for k in kinds.split(",") if k.strip()],
        folds=folds,
        grouped_folds=grouped_folds,
        bootstrap=bootstrap,
        rules=[r.strip() for r in rules.split(",") if r.strip()],
    )
    bench = load_benchmark(_data_dir(data_dir), list(DATASETS))
    report = run_evaluation(
        bench,
        cfg,
        load_catalog(None),
        settings.cache_dir,
        enc_cfg,
        out or settings.reports_dir,
    )
    typer.echo(report.markdown_path.read_text(encoding="utf-8"))
    if log_mlflow:
        from services.contracts.settings import MLflowSettings

        from .registry import RegistryError, log_report

        try:
            log_report(MLflowSettings(), report)
        except RegistryError as exc:
            raise _fail(str(exc), 1) from exc


@router_app.command("finetune-eval")
def finetune_eval_cmd(
    out: Path = typer.Option(Path("reports/router-finetune"), help="Report directory."),  # noqa: B008
    top_layers: int = typer.Option(1, min=1, max=6, help="Trainable top encoder layers (6 = all)."),
    epochs: int = typer.Option(2, min=1, help="Fine-tuning epochs (early-stopped)."),
    lr_encoder: float = typer.Option(5e-5, help="AdamW learning rate of the encoder layers."),
    batch_size: int = typer.Option(None, help="Default 32 on CPU, 128 on CUDA."),
    folds: int = typer.Option(5, min=2, help="Out-of-fold folds (by prompt hash, as router eval)."),
    groups: int = typer.Option(5, min=2, help="Leave-subjects-out groups."),
    parts: str = typer.Option("kfold,lso", help="kfold, lso or both."),
    only: str = typer.Option(None, help="Comma-separated fold / group numbers to run (default all)."),
    bootstrap: int = typer.Option(200, min=0, help="Bootstrap resamples for intervals."),
    threads: int = typer.Option(None, help="CPU intra-op threads."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    data_dir: Path = typer.Option(None, help="Benchmark data (default SWITCHYARD_DATA_DIR)."),  # noqa: B008
) -> None:
    """Fine-tuned encoder vs the frozen-encoder MLP on MMLU (same folds); resumable per fold."""
    from .finetune import FinetuneConfig
    from .finetune_eval import run_finetune_evaluation
    from .settings import TrainingSettings

    ft = FinetuneConfig(
        top_layers=top_layers,
        epochs=epochs,
        lr_encoder=lr_encoder,
        batch_size=batch_size,
        threads=threads,
        device=device,
    )
    bench = load_benchmark(_data_dir(data_dir), ["mmlu"])
    run_finetune_evaluation(
        bench,
        ft,
        TrainingSettings().cache_dir,
        out,
        folds=folds,
        groups=groups,
        parts=tuple(p.strip() for p in parts.split(",") if p.strip()),
        only=[int(x) for x in only.split(",")] if only else None,
        n_boot=bootstrap,
    )
    typer.echo((out / "finetune.md").read_text(encoding="utf-8"))


@router_app.command("promote")
def promote_cmd(
    version: str = typer.Option(None, help="Version to promote (default: the one behind --from-alias)."),
    from_alias: str = typer.Option("challenger", help="Alias whose version is promoted."),
    to_alias: str = typer.Option("champion", help="Alias to move."),
) -> None:
    """Move the ``champion`` alias (to the challenger by default)."""
    from services.contracts.settings import MLflowSettings

    from .registry import RegistryError, promote

    ms = MLflowSettings()
    try:
        v = promote(ms, version=version, from_alias=from_alias, to_alias=to_alias)
    except RegistryError as exc:
        raise _fail(str(exc), 1) from exc
    typer.echo(f"models:/{ms.registered_model}@{to_alias} -> version {v}")


@router_app.command("rollback")
def rollback_cmd(alias: str = typer.Option("champion", help="Alias to move back.")) -> None:
    """Move ``champion`` back to the version it had before the last promotion."""
    from services.contracts.settings import MLflowSettings

    from .registry import RegistryError, rollback

    ms = MLflowSettings()
    try:
        v = rollback(ms, alias=alias)
    except RegistryError as exc:
        raise _fail(str(exc), 1) from exc
    typer.echo(f"models:/{ms.registered_model}@{alias} -> version {v}")


@router_app.command("check")
def check_cmd(
    model: str = typer.Option(..., "--model", help="Router ref (dir or MLflow URI)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI."),
) -> None:
    """Load a router, verify its files and run the smoke check."""
    from services.contracts.settings import MLflowSettings
    from services.router.artifact import RouterLoadError, load_router, smoke_check

    try:
        router = load_router(model, tracking_uri=tracking_uri or MLflowSettings().tracking_uri)
        out = smoke_check(router)
    except RouterLoadError as exc:
        raise _fail(str(exc), 1) from exc
    typer.echo(json.dumps({"version": router.version, "models": router.models, "smoke": out[:1]}, indent=1))


if __name__ == "__main__":  # pragma: no cover
    router_app(sys.argv[1:])

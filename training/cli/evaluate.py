"""``switchyard train eval ...``: offline evaluations of router kinds, rules and fine-tuning.

Both write a report directory (markdown + JSON); docs/router.md quotes them with their commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import benchmark, csv, fail

eval_app = typer.Typer(no_args_is_help=True, help="Offline evaluations: router kinds and rules, fine-tuning.")


@eval_app.command("kinds")
def kinds_cmd(
    out: Path = typer.Option(None, help="Report directory (default reports/router)."),  # noqa: B008
    kinds: str = typer.Option("random,knn,mf,mlp", help="Routers to evaluate."),
    folds: int = typer.Option(5, min=2, help="Random (by prompt hash) out-of-fold folds."),
    grouped_folds: int = typer.Option(10, min=2, help="Leave-tasks-out folds."),
    bootstrap: int = typer.Option(200, min=0, help="Bootstrap resamples for intervals."),
    rules: str = typer.Option("gap,absolute,need", help="Routing rules to evaluate."),
    max_length: int = typer.Option(128, help="Encoder truncation (tokens)."),
    int8: bool = typer.Option(False, "--int8", help="int8 dynamic quantisation of the encoder (CPU)."),
    backend: str = typer.Option(
        "torch",
        help="Encoder backend: torch, onnx (ONNX Runtime, CPU) or static (MiniLM distilled by model2vec).",
    ),
    static_pca_dims: int = typer.Option(
        256, min=0, max=384, help="static backend: PCA dimensions of the distilled table (0: all 384)."
    ),
    data_dir: Path = typer.Option(None, help="Benchmark data (default SWITCHYARD_DATA_DIR)."),  # noqa: B008
    log_mlflow: bool = typer.Option(False, "--mlflow", help="Also log the report to MLflow."),
) -> None:
    """Evaluate every router kind and rule, leave-tasks-out first: share@95, APGR, CPT, realized
    quality vs target, RouterBench savings, cascade."""
    from services.catalog import load_catalog
    from services.router.encoder import EncoderConfig

    from ..data import DATASETS
    from ..evaluation.kinds import EvalConfig, run_evaluation
    from ..settings import TrainSettings

    try:
        enc_cfg = EncoderConfig(
            max_length=max_length, quantize_int8=int8, backend=backend, static_pca_dims=static_pca_dims
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    settings = TrainSettings()
    cfg = EvalConfig(
        kinds=csv(kinds),
        folds=folds,
        grouped_folds=grouped_folds,
        bootstrap=bootstrap,
        rules=csv(rules),
    )
    bench = benchmark(data_dir, list(DATASETS))
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

        from ..registry import RegistryError, log_report

        try:
            log_report(MLflowSettings(), report)
        except RegistryError as exc:
            raise fail(str(exc), 1) from exc


@eval_app.command("finetune")
def finetune_cmd(
    out: Path = typer.Option(Path("reports/router-finetune"), help="Report directory."),  # noqa: B008
    top_layers: int = typer.Option(1, min=1, max=6, help="Trainable top encoder layers (6 = all)."),
    epochs: int = typer.Option(2, min=1, help="Fine-tuning epochs (early-stopped)."),
    lr_encoder: float = typer.Option(5e-5, help="AdamW learning rate of the encoder layers."),
    batch_size: int = typer.Option(None, help="Default 32 on CPU, 128 on CUDA."),
    folds: int = typer.Option(5, min=2, help="Out-of-fold folds (by prompt hash, as eval kinds)."),
    groups: int = typer.Option(5, min=2, help="Leave-subjects-out groups."),
    parts: str = typer.Option("kfold,lso", help="kfold, lso or both."),
    only: str = typer.Option(None, help="Comma-separated fold / group numbers to run (default all)."),
    bootstrap: int = typer.Option(200, min=0, help="Bootstrap resamples for intervals."),
    threads: int = typer.Option(None, help="CPU intra-op threads."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    data_dir: Path = typer.Option(None, help="Benchmark data (default SWITCHYARD_DATA_DIR)."),  # noqa: B008
) -> None:
    """Fine-tuned encoder vs the frozen-encoder MLP on MMLU (same folds); resumable per fold."""
    from ..evaluation.finetune import run_finetune_evaluation
    from ..finetune import FinetuneConfig
    from ..settings import TrainSettings

    ft = FinetuneConfig(
        top_layers=top_layers,
        epochs=epochs,
        lr_encoder=lr_encoder,
        batch_size=batch_size,
        threads=threads,
        device=device,
    )
    bench = benchmark(data_dir, ["mmlu"])
    run_finetune_evaluation(
        bench,
        ft,
        TrainSettings().cache_dir,
        out,
        folds=folds,
        groups=groups,
        parts=tuple(csv(parts)),
        only=[int(x) for x in only.split(",")] if only else None,
        n_boot=bootstrap,
    )
    typer.echo((out / "finetune.md").read_text(encoding="utf-8"))

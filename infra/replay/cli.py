"""``switchyard replay``: drive a gateway (or the emulator) with benchmark traffic."""

from __future__ import annotations

from pathlib import Path

import typer

replay_app = typer.Typer(help="Replay benchmark traffic with the openai client; feedback; drift scenarios.")


@replay_app.callback(invoke_without_command=True)
def replay(
    ctx: typer.Context,
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="OpenAI-style base URL (the gateway)."),
    model: str = typer.Option("switchyard/auto", help="Model to request (a catalog id to hit the emulator)."),
    scenario: str = typer.Option("steady", help="steady | new-task | mix-shift | cheap-degrades."),
    mix: str | None = typer.Option(None, help="Task mix, e.g. 'mmlu=1,gsm8k=2,mbpp=1' (tasks or datasets)."),
    count: int | None = typer.Option(None, help="Number of requests (default 200 unless --duration)."),
    duration: float | None = typer.Option(None, help="Seconds to run instead of a count."),
    concurrency: int = typer.Option(8, help="Requests in flight."),
    rate: float | None = typer.Option(
        None, help="Requests started per second (default: as fast as possible)."
    ),
    stream: bool = typer.Option(False, help="Stream answers (SSE)."),
    feedback_share: float = typer.Option(0.2, help="Share of answers that get ground-truth feedback."),
    near_duplicates: float = typer.Option(
        0.0, help="Share of requests that are near-duplicates of earlier ones (repeats, rewordings, traps)."
    ),
    cache: bool = typer.Option(True, help="--no-cache: every request opts out of the semantic cache."),
    emulator_url: str = typer.Option(
        "http://127.0.0.1:8100", help="Emulator (truth side channel, drift); '' = none."
    ),
    api_key: str = typer.Option(
        "switchyard-replay", envvar="SWITCHYARD_REPLAY_API_KEY", help="API key sent."
    ),
    new_task: str = typer.Option("professional_law", help="new-task: the MMLU subject that appears."),
    degrade_model: str = typer.Option("mistralai/Mixtral-8x7B-Instruct-v0.1", help="cheap-degrades: model."),
    degrade_task: str = typer.Option("gsm8k", help="cheap-degrades: task or dataset."),
    data_dir: Path | None = typer.Option(None, help="Benchmark data (default SWITCHYARD_DATA_DIR)."),  # noqa: B008
    dataset: list[str] | None = typer.Option(  # noqa: B008
        None, help="Load only these datasets (mmlu, gsm8k, routerbench); default all present."
    ),
    out: Path = typer.Option(Path("reports/replay"), help="Directory for summary.json and summary.md."),  # noqa: B008
    seed: int = typer.Option(0, help="Seed: same seed, same prompts in the same order."),
    timeout: float = typer.Option(60.0, help="Per-request timeout (s)."),
) -> None:
    """Run a replay (when no subcommand is given); print and write the summary."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from infra.emulator.server import resolve_data_dir
    from services.catalog import load_catalog

    from .config import ReplayConfig
    from .runner import replay as run_replay
    from .scenarios import build_scenario, parse_mix
    from .summary import to_markdown, write_summary

    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        sc = build_scenario(
            scenario,
            parse_mix(mix) if mix else None,
            new_task=new_task,
            degrade_model=degrade_model,
            degrade_task=degrade_task,
        )
        cfg = ReplayConfig(
            base_url=base_url,
            api_key=api_key,
            model=model,
            emulator_url=emulator_url or None,
            count=count if count or duration else 200,
            duration_s=duration,
            concurrency=concurrency,
            rate=rate,
            stream=stream,
            feedback_share=feedback_share,
            near_duplicates=near_duplicates,
            cache=cache,
            seed=seed,
            timeout_s=timeout,
        )
        _, summary = run_replay(cfg, sc, resolve_data_dir(data_dir), load_catalog(), dataset or None)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(to_markdown(summary))
    js, md = write_summary(summary, out)
    typer.echo(f"written: {js} {md}")


@replay_app.command("scenarios")
def scenarios() -> None:
    """List the named scenarios and their phases."""
    from .scenarios import SCENARIOS, build_scenario

    for name in SCENARIOS:
        sc = build_scenario(name)
        typer.echo(f"{name}: {sc.description}")
        for p in sc.phases:
            extra = f" drift={[a.model_dump() for a in p.drift]}" if p.drift else ""
            typer.echo(f"  - {p.name} ({p.share:.0%}): mix={p.mix} exclude={list(p.exclude_tasks)}{extra}")

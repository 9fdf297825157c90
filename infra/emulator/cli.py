"""``switchyard emulator``: serve the upstream emulator, and drive its admin endpoints."""

from __future__ import annotations

import json
from pathlib import Path

import typer

emulator_app = typer.Typer(help="The upstream emulator (OpenAI/Anthropic-compatible, recorded answers).")


@emulator_app.callback(invoke_without_command=True)
def emulator(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="Bind address [default: 127.0.0.1]."),
    port: int | None = typer.Option(None, help="Port [default: 8100, as the catalog's emulator providers]."),
    fd: int | None = typer.Option(None, help="Serve on an inherited, already bound socket fd."),
    data_dir: Path | None = typer.Option(None, help="Benchmark data (default SWITCHYARD_DATA_DIR)."),  # noqa: B008
    dataset: list[str] | None = typer.Option(None, help="Only these datasets: mmlu, gsm8k, routerbench."),  # noqa: B008
    catalog: Path | None = typer.Option(None, help="Catalog YAML (default: built-in)."),  # noqa: B008
    config: Path | None = typer.Option(None, help="YAML/JSON start config: faults, drift, latency."),  # noqa: B008
    speed: float | None = typer.Option(None, help="Latency factor: 1 realistic, 0 none [default: 1]."),
    seed: int | None = typer.Option(None, help="Seed of fault draws and latency jitter [default: 0]."),
    chunk_words: int | None = typer.Option(None, help="Words per stream chunk [default: 4]."),
    log_level: str | None = typer.Option(None, help="uvicorn log level [default: warning]."),
    cache: bool | None = typer.Option(None, "--cache/--no-cache", help="Corpus cache [default: on]."),
) -> None:
    """Serve the emulator (when no subcommand is given). Unset options come from
    ``SWITCHYARD_EMULATOR_*`` environment variables, then the defaults."""
    if ctx.invoked_subcommand is not None:
        return
    from .server import serve
    from .settings import ConfigFileError, EmulatorSettings

    overrides = dict(
        host=host,
        port=port,
        fd=fd,
        data_dir=data_dir,
        datasets=dataset or None,
        catalog=catalog,
        config=config,
        speed=speed,
        seed=seed,
        chunk_words=chunk_words,
        log_level=log_level,
        cache=cache,
    )
    settings = EmulatorSettings(**{k: v for k, v in overrides.items() if v is not None})
    try:
        serve(settings)
    except (ConfigFileError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc


def _admin(url: str, method: str, path: str, body: dict | None = None) -> None:
    import httpx

    try:
        resp = httpx.request(method, url.rstrip("/") + path, json=body, timeout=10)
    except httpx.HTTPError as exc:
        typer.secho(f"error: emulator at {url} not reachable: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(resp.json(), indent=2))
    if resp.status_code >= 400:
        raise typer.Exit(1)


def _spec(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object")
    return value


@emulator_app.command("fault")
def fault(
    model: str = typer.Argument(..., help="Model id or '*'."),
    spec: str = typer.Argument(
        "{}", help='FaultSpec JSON, e.g. \'{"error_rate": 0.2, "error_statuses": [503]}\'.'
    ),
    url: str = typer.Option("http://127.0.0.1:8100", help="Emulator base URL."),
) -> None:
    """Set a model's faults on a running emulator."""
    _admin(url, "POST", "/emulator/faults", {"model": model, **_spec(spec)})


@emulator_app.command("drift")
def drift(
    model: str = typer.Argument(..., help="Model id."),
    task: str = typer.Argument(..., help="Task or dataset name, or '*'."),
    wrong_rate: float = typer.Option(1.0, help="Share of the task's prompts that turn wrong."),
    start_in_s: float = typer.Option(0.0, help="Seconds from now."),
    url: str = typer.Option("http://127.0.0.1:8100", help="Emulator base URL."),
) -> None:
    """Make a model's answers on a task turn wrong from a given moment."""
    _admin(
        url,
        "POST",
        "/emulator/drift",
        {"model": model, "task": task, "wrong_rate": wrong_rate, "start_in_s": start_in_s},
    )


@emulator_app.command("reset")
def reset(url: str = typer.Option("http://127.0.0.1:8100", help="Emulator base URL.")) -> None:
    """Back to the start config (faults, drift, latency, counters)."""
    _admin(url, "POST", "/emulator/reset")


@emulator_app.command("stats")
def stats(url: str = typer.Option("http://127.0.0.1:8100", help="Emulator base URL.")) -> None:
    """Requests per model, injected faults, feedback received."""
    _admin(url, "GET", "/emulator/stats")

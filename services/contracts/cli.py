"""``switchyard contracts``: export JSON Schemas, validate records against a topic's contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .events import ContractError
from .topics import decode, json_schemas

contracts_app = typer.Typer(no_args_is_help=True)


@contracts_app.command("schema")
def schema(
    out: Path = typer.Option(Path("schemas"), help="Directory for one <topic>.schema.json each."),  # noqa: B008
) -> None:
    """Write the JSON Schema of every topic's value."""
    out.mkdir(parents=True, exist_ok=True)
    for topic, sch in json_schemas().items():
        (out / f"{topic}.schema.json").write_text(json.dumps(sch, indent=2) + "\n")
        typer.echo(str(out / f"{topic}.schema.json"))


@contracts_app.command("validate")
def validate(
    topic: str,
    path: Path = typer.Argument(None, help="JSON lines file (default stdin)."),  # noqa: B008
) -> None:
    """Validate JSON-lines records against TOPIC's contract; exit 1 on the first invalid one."""
    lines = path.read_text().splitlines() if path else sys.stdin.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            decode(topic, line)
        except ContractError as exc:
            typer.secho(f"line {n}: {exc}", fg="red", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"{len([x for x in lines if x.strip()])} record(s) valid for {topic}")

"""CLI for the local stack, topics and data (``switchyard stack|topics|data``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from services.contracts.settings import DataSettings, KafkaSettings, StackSettings

log = logging.getLogger(__name__)

stack_app = typer.Typer(no_args_is_help=True)
topics_app = typer.Typer(no_args_is_help=True)
data_app = typer.Typer(no_args_is_help=True)


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka (KRaft) and MLflow in the background and wait until both answer."""
    from infra.stack import StackError, up

    try:
        for st in up(StackSettings()):
            typer.echo(st.line())
    except StackError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc


@stack_app.command("down")
def stack_down() -> None:
    """Stop the processes `stack up` started."""
    from infra.stack import down, status

    settings = StackSettings()
    down(settings)
    for st in status(settings):
        typer.echo(st.line())


@stack_app.command("status")
def stack_status() -> None:
    """Show whether each service runs and answers; exit 1 if any is not ready."""
    from infra.stack import status

    states = status(StackSettings())
    for st in states:
        typer.echo(st.line())
    if not all(st.ready for st in states):
        raise typer.Exit(1)


@topics_app.command("apply")
def topics_apply(
    prefix: str = typer.Option(None, help="Topic name prefix (default SWITCHYARD_KAFKA_TOPIC_PREFIX)."),
    max_replication: int = typer.Option(None, help="Cap the replication factor (default: broker count)."),
) -> None:
    """Create or update every topic from its definition (idempotent)."""
    from services.contracts.topic_admin import apply_topics

    kafka = KafkaSettings()
    try:
        changes = asyncio.run(
            apply_topics(
                kafka.bootstrap,
                prefix if prefix is not None else kafka.topic_prefix,
                max_replication=max_replication,
                timeout_ms=kafka.request_timeout_ms,
                client_options=kafka.client_options(),
            )
        )
    except Exception as exc:  # noqa: BLE001 - report any admin failure as a clear CLI error
        typer.secho(f"error: applying topics on {kafka.bootstrap} failed: {exc!r}", fg="red", err=True)
        raise typer.Exit(1) from exc
    for c in changes:
        typer.echo(c.line())


@topics_app.command("list")
def topics_list() -> None:
    """Print the topic definitions."""
    from services.contracts.topics import TOPICS

    for t in TOPICS:
        typer.echo(
            f"{t.name:30s} key={t.key or '-':11s} partitions={t.partitions} "
            f"replication={t.replication} {t.configs()}"
        )


@topics_app.command("k8s")
def topics_k8s(
    out: Path = typer.Option(None, help="Write here (e.g. k8s/base/kafka-topics.yaml); default stdout."),  # noqa: B008
    cluster: str = typer.Option("switchyard", help="The Strimzi Kafka cluster (label strimzi.io/cluster)."),
    prefix: str = typer.Option("", help="Topic name prefix."),
) -> None:
    """Render one Strimzi KafkaTopic per topic definition (the committed k8s/base/kafka-topics.yaml)."""
    from infra.k8s_topics import render_topics

    text = render_topics(cluster=cluster, prefix=prefix)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text)
    typer.echo(f"wrote {out}")


def _data_dir() -> Path:
    return DataSettings().data_dir


@data_app.command("fetch")
def data_fetch() -> None:
    """Download missing benchmark files into SWITCHYARD_DATA_DIR (skipped when they are present)."""
    from infra.datafetch import fetch, present

    settings = DataSettings()
    have = present(settings.data_dir)
    if have["mmlu subjects"] and have["gsm8k"] and have["routerbench files"]:
        typer.echo(f"data present in {settings.data_dir}: {have}; nothing to download")
        return
    if not settings.data_download:
        typer.secho(
            f"error: data missing in {settings.data_dir} ({have}) and downloads are off", fg="red", err=True
        )
        raise typer.Exit(1)
    done, failed = fetch(settings.data_dir)
    typer.echo(f"downloaded {done} file(s) into {settings.data_dir}")
    if failed:
        typer.secho("failed:\n  " + "\n  ".join(failed), fg="red", err=True)
        raise typer.Exit(1)


@data_app.command("check")
def data_check() -> None:
    """Load every benchmark present and print row counts per dataset and task count."""
    from training.data import DataNotFoundError, load_all

    try:
        bench = load_all(_data_dir())
    except DataNotFoundError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    counts = bench.frame.groupby("dataset").agg(rows=("id", "size"), tasks=("task", "nunique"))
    typer.echo(counts.to_string())
    typer.echo(f"models: {', '.join(bench.models)}")

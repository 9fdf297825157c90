"""``switchyard stream``: run the Faust streams worker against the real broker."""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path

import typer

stream_app = typer.Typer(no_args_is_help=False, add_completion=False, help="Streams worker (Faust).")
log = logging.getLogger(__name__)


@stream_app.callback(invoke_without_command=True)
def _default(ctx: typer.Context) -> None:
    """Without a subcommand, run the worker with its settings from the environment."""
    if ctx.invoked_subcommand is None:
        worker()


@stream_app.command("worker")
def worker(
    web_port: int | None = typer.Option(
        None, help="Faust web port (/metrics, /stats/); default from settings."
    ),
    app_id: str | None = typer.Option(None, help="Faust app id (also the consumer group)."),
    webhook_url: str | None = typer.Option(None, help="On-call webhook (Alertmanager API v2 or PagerDuty)."),
    reference: Path | None = typer.Option(None, help='Reference JSON {"task": {"model": acceptance}}.'),  # noqa: B008
    create_topics: bool = typer.Option(True, help="Create missing topics from their definition first."),
    loglevel: str = typer.Option("info", help="Worker log level."),
) -> None:
    """Run one streams worker: join, per-task tables, drift detectors, alerts, mining."""
    import faust

    from services.contracts.settings import KafkaSettings
    from services.contracts.topic_admin import apply_topics
    from services.contracts.topics import streams_internal_topics

    from . import eventloop, gcpolicy
    from .app import create_app
    from .settings import StreamsSettings

    overrides = {
        k: v
        for k, v in {
            "web_port": web_port,
            "app_id": app_id,
            "webhook_url": webhook_url,
            "reference_path": reference,
        }.items()
        if v is not None
    }
    settings = StreamsSettings(**overrides)
    kafka = KafkaSettings()
    # Before any event loop exists (topic creation below runs one): every loop is then this kind.
    loop = eventloop.install(settings.event_loop)
    if create_topics:
        asyncio.run(apply_topics(kafka.bootstrap, kafka.topic_prefix, client_options=kafka.client_options()))
    # evidently (the input-drift detector) takes seconds of CPU to import: do it before the
    # worker joins the group, so that it does not compete with the first batches it processes.
    importlib.import_module("evidently.presets")
    importlib.import_module("evidently.legacy.calculations.stattests.registry")  # the checks' tests
    app = create_app(settings, kafka)
    # The topics its own agents consume, created and visible before Faust subscribes to them:
    # Faust declares internal topics just before it subscribes, and a topic the broker's metadata
    # does not list yet is dropped from the subscription ("Ignoring missing topic") until a later
    # rebalance, leaving its agent silently without partitions.
    internal = streams_internal_topics(settings.app_id, settings.replication)
    asyncio.run(
        apply_topics(
            kafka.bootstrap,
            kafka.topic_prefix,
            internal,
            settings.replication,
            client_options=kafka.client_options(),
        )
    )
    gcpolicy.apply(settings.gc_freeze, settings.gc_gen0)
    log.info(
        "streams worker %s on %s (prefix %r), web %s:%s, webhook %s, event loop %s",
        settings.app_id,
        kafka.bootstrap,
        kafka.topic_prefix,
        settings.web_host,
        settings.web_port,
        settings.webhook_kind if settings.webhook_url else "off",
        loop,
    )
    faust.Worker(app, loglevel=loglevel, redirect_stdouts=False).execute_from_commandline()


@stream_app.command("alerts")
def alerts(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep waiting for new alerts."),
    timeout_s: float = typer.Option(5.0, help="Without --follow, stop after this long without a record."),
) -> None:
    """Print the alerts on switchyard.alerts.v1 (from the beginning), one line each."""
    from services.contracts import AlertEvent, ContractError
    from services.contracts.settings import KafkaSettings
    from services.contracts.topics import ALERTS, topic_name

    async def run() -> None:
        from aiokafka import AIOKafkaConsumer

        kafka = KafkaSettings()
        consumer = AIOKafkaConsumer(
            topic_name(ALERTS, kafka.topic_prefix),
            bootstrap_servers=kafka.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            **kafka.client_options(),
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
                if not batch and not follow:
                    return
                for records in batch.values():
                    for r in records:
                        try:
                            a = AlertEvent.from_bytes(r.value)
                        except ContractError as exc:
                            typer.echo(f"(invalid record at offset {r.offset}: {exc})")
                            continue
                        typer.echo(
                            f"{a.ts:%Y-%m-%d %H:%M:%S} {a.status.value:8s} {a.severity:8s} "
                            f"task={a.task} detector={a.detector} {a.summary}"
                            + (f" report={a.report_url}" if a.report_url else "")
                        )
        finally:
            await consumer.stop()

    asyncio.run(run())

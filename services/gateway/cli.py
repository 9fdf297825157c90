"""``switchyard serve`` (run the gateway locally on Ray Serve) and
``switchyard config`` (validate the catalog, hash API keys)."""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
from pathlib import Path

import typer

log = logging.getLogger(__name__)

serve_app = typer.Typer(help="Run the gateway (Ray Serve) locally; its replicas follow the router alias.")
config_app = typer.Typer(no_args_is_help=True, help="The model catalog and gateway configuration.")


@serve_app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: str = typer.Option(None, help="HTTP host (default SWITCHYARD_GATEWAY_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, help="HTTP port (default SWITCHYARD_GATEWAY_PORT or 8000)."),
    router_ref: str = typer.Option(None, "--router", help="Router model: models:/name@alias or a path."),
    catalog: Path = typer.Option(None, exists=True, dir_okay=False, help="Catalog YAML."),  # noqa: B008
    topic_prefix: str = typer.Option(None, help="Kafka topic prefix."),
    num_cpus: int = typer.Option(2, help="CPUs for the local Ray instance."),
) -> None:
    """Start Ray + Serve locally and serve until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    # .local before anything imports Ray: it sets Ray's loopback switch, read when Ray is imported
    from .local import GatewayArgs, deploy, start_ray

    if router_ref and Path(router_ref).exists():
        router_ref = str(Path(router_ref).resolve())  # replicas may not share this cwd
    catalog = catalog.resolve() if catalog else None
    args = GatewayArgs(router_ref=router_ref, catalog_path=catalog, topic_prefix=topic_prefix).resolved()
    settings = args.gateway_settings()
    host, port = host or settings.host, port or settings.port
    start_ray(settings, num_cpus, log_to_driver=True, http_port=port)
    url = deploy(args, host=host, port=port)
    typer.echo(f"switchyard gateway ready at {url} (router {settings.router_ref}); Ctrl-C to stop")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        import ray
        from ray import serve as ray_serve

        ray_serve.shutdown()
        ray.shutdown()


@serve_app.command("swap", hidden=True)
def swap(router_ref: str = typer.Argument(..., help="Ignored.")) -> None:
    """Removed: the gateway's replicas follow their MLflow alias."""
    typer.secho(
        "error: `serve swap` is gone: the gateway's replicas follow their MLflow alias by themselves. "
        "Move it with `switchyard router promote --version N --wait` (gate and verification checked) "
        "or `switchyard router rollback --wait`; to serve a local artefact, restart with --router PATH.",
        fg="red",
        err=True,
    )
    raise typer.Exit(2)


@config_app.command("validate")
def validate(
    catalog: Path = typer.Argument(None, help="Catalog YAML (default: the built-in one)."),  # noqa: B008
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on resilience warnings too."),
) -> None:
    """Validate a catalog file; exit 1 with the offending fields on error. Warns about models
    without a fallback on another provider (their requests fail whenever that provider does)."""
    from services.catalog import CatalogError, load_catalog

    try:
        cat = load_catalog(catalog)
    except CatalogError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    warnings = cat.resilience_warnings()
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    if warnings and strict:
        raise typer.Exit(1)
    typer.echo(
        f"ok: {len(cat.models)} models, {len(cat.providers)} providers, tiers {cat.tiers}, "
        f"strong {cat.strong_model}, default {cat.default_model}"
    )


@config_app.command("hash-key")
def hash_key(key: str = typer.Option(..., prompt=True, hide_input=True, help="The API key to hash.")) -> None:
    """Print the SHA-256 to put in SWITCHYARD_GATEWAY_API_KEY_HASHES (the key itself is not stored)."""
    typer.echo(hashlib.sha256(key.encode("utf-8")).hexdigest())

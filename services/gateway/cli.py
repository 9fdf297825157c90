"""``switchyard serve`` (run the gateway locally on Ray Serve, swap the router) and
``switchyard config`` (validate the catalog, hash API keys)."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from pathlib import Path

import typer

from services.router.promotion import (  # noqa: F401 - the tag names are part of the swap's contract
    GATE_KIND_TAG,
    GATE_REASONS_TAG,
    GATE_TAG,
    NO_GATE_RECORD,
    gate_problem,
    parse_model_ref,
    verify,
)

log = logging.getLogger(__name__)

serve_app = typer.Typer(help="Run the gateway (Ray Serve) locally; hot-swap its router.")
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
    from ray import serve as ray_serve

    from .deployments import GatewayArgs
    from .local import deploy, save_state, start_ray

    if router_ref and Path(router_ref).exists():
        router_ref = str(Path(router_ref).resolve())  # replicas may not share this cwd
    catalog = catalog.resolve() if catalog else None
    args = GatewayArgs(router_ref=router_ref, catalog_path=catalog, topic_prefix=topic_prefix).resolved()
    settings = args.gateway_settings()
    host, port = host or settings.host, port or settings.port
    address = start_ray(settings, num_cpus, log_to_driver=True, http_port=port)
    url = deploy(args, host=host, port=port)
    save_state(settings, address, args, url)
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

        ray_serve.shutdown()
        ray.shutdown()


def _gate_problems(ref: str, tracking_uri: str) -> list[str]:
    """Why ``ref`` has no passed gate record: only a registered version (``models:/NAME/N`` or
    ``models:/NAME@ALIAS``) carries one, in its tags."""
    parsed = parse_model_ref(ref)
    if parsed is None:
        return [NO_GATE_RECORD]
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, version, alias = parsed
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        return [f"cannot be resolved in MLflow ({tracking_uri}): {exc.message}"]
    except OSError as exc:
        return [f"MLflow at {tracking_uri} is unreachable: {exc}"]
    problem = gate_problem(mv.tags)
    return [f"version {mv.version} {problem}"] if problem else []


def swap_problems(ref: str, tracking_uri: str | None = None) -> list[str]:
    """Why the gateway should not swap to ``ref`` (empty: go ahead): no passed gate record, or the
    artefact fails verification (download, load with content hashes checked, smoke check)."""
    from services.contracts.settings import MLflowSettings

    uri = tracking_uri or MLflowSettings().tracking_uri
    problems = _gate_problems(ref, uri)
    _, failed = verify(ref, uri)
    return problems + ([failed] if failed else [])


@serve_app.command("swap")
def swap(
    router_ref: str = typer.Argument(..., help="New router: models:/name@alias, models:/name/N or a path."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Swap even when the router has no passed gate record (a local path never has one) or "
        "fails verification here.",
    ),
) -> None:
    """Hot-swap the running gateway's router (in-place reconfigure; the old one stays on failure).

    The router must be a registered version with a passed gate record and must verify here
    (downloaded, loaded, smoke-checked) before the gateway is asked; otherwise exit 1 unless
    ``--force``."""
    if Path(router_ref).exists():
        router_ref = str(Path(router_ref).resolve())
    problems = swap_problems(router_ref)
    if problems and not force:
        typer.secho(
            f"error: refusing to swap to {router_ref}: {'; '.join(problems)}; pass --force to swap anyway",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    if problems:
        typer.echo(f"warning: forced swap to {router_ref}: {'; '.join(problems)}", err=True)
    # A local Ray started by `switchyard serve` uses token auth (token in ~/.ray/auth_token); Ray
    # reads the mode when it is imported.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import httpx
    import ray

    from .deployments import GatewayArgs
    from .local import load_state, save_state, swap_router
    from .settings import GatewaySettings

    settings = GatewaySettings()
    state = load_state(settings)
    ray.init(address=state["address"], logging_level=logging.WARNING)
    args = swap_router(GatewayArgs.model_validate(state["args"]), router_ref)
    save_state(settings, state["address"], args, state["url"])
    typer.echo(f"requested swap to {router_ref}; router status: {httpx.get(state['url'] + '/readyz').text}")


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

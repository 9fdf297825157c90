"""Run the Serve application on a local Ray instance (``switchyard serve``, tests, benchmarks).

Ray's temp dir lives in the state dir. A new router reaches the running replicas without this
module: they follow their MLflow alias (:mod:`services.gateway.follow`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx

# A single-node Ray on loopback: with this off (Ray's own switch for a local-only instance) the
# node address is 127.0.0.1 and Ray binds its servers (GCS, raylet, object manager, workers,
# agents, Serve's proxy) to it instead of the machine's address; only Serve's inter-deployment
# gRPC stays on [::] (fixed in Ray's code), behind Ray's token authentication like the rest
# (docs/operations.md, "What listens where"). Ray reads it when it is imported, so it is set
# here, before this module's imports bring Ray in; the environment wins. ``start_ray`` warns
# when Ray was imported earlier and its node address is not loopback.
LOCAL_RAY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ.setdefault(LOCAL_RAY_ENV, "0")

from .deployments import APP_NAME, GatewayArgs, build_app  # noqa: E402 - after the Ray switch
from .settings import GatewaySettings  # noqa: E402

log = logging.getLogger(__name__)


# Ray Serve's per-request plumbing, tuned for a few CPU cores (each one overridable from the
# environment; read by Serve's processes when they start, so only when this starts Ray): run the
# deployments' code and the handles' request router on the replica's own event loop instead of
# a thread each (no cross-thread hop per request and per handle call), send handle calls (ingress
# → router) over gRPC instead of Ray actor calls (measured: ingress 5.1 → 4.0 and router 2.7 →
# 1.9 CPU ms per cached request), and buffer request-path log lines instead of flushing each one.
SERVE_ENV_DEFAULTS = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    # Ray starts every worker process (the ingress and router replicas, Serve's controller and
    # proxy) at nice 15 (`worker_niceness`) so that its raylet and GCS win the CPU; on a machine
    # shared with other work every nice-0 process then takes the cores first (a weight of 1024
    # against 36 in Linux's scheduler) and the gateway's own request path queues behind them.
    "RAY_worker_niceness": "0",
    # numpy's BLAS on one thread per process: the cheap router's small matmuls in the ingress
    # otherwise spread over every core and cost twice the CPU (docs/router.md, "The static encoder")
    "OPENBLAS_NUM_THREADS": "1",
}


def serve_env(log_to_driver: bool = False, direct_ingress_port: int | None = None) -> dict[str, str]:
    """The Serve knobs this process will start Ray with (env values win over the defaults).
    With ``direct_ingress_port`` the ingress replica serves HTTP on exactly that port."""
    env = dict(SERVE_ENV_DEFAULTS)
    if not log_to_driver:
        env["RAY_SERVE_LOG_TO_STDERR"] = "0"  # replica logs still go to their files
    if direct_ingress_port:
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        # A direct-ingress replica keeps serving for this long after it is told to stop, so that
        # a load balancer in front can deregister it (Serve's default 30 s). Locally there is none,
        # and the wait outlasted serve.shutdown()'s 30 s ("Controller failed to shut down").
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
        env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(direct_ingress_port)
        env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(direct_ingress_port + 1)
    return {k: os.environ.get(k, v) for k, v in env.items()}


def private_ray_token() -> Path:
    """Ray's token (token authentication is on for a new local instance) in a file only this user
    can read: Ray creates ``~/.ray/auth_token`` world-readable when it is missing, so it is made
    here first (mode 0600), and an existing one is narrowed to 0600. Ray reads its auth settings
    when it is imported, so the token stays at the default path Ray already knows."""
    import secrets

    token = Path.home() / ".ray" / "auth_token"
    token.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.chmod(token, 0o600)
    return token


def start_ray(
    settings: GatewaySettings,
    num_cpus: int | None = 2,
    log_to_driver: bool = False,
    http_port: int | None = None,
) -> str:
    """Start (or join) a local Ray instance with its temp dir in the state dir; its address.
    Replica logs stay in ``<state_dir>/ray/session_latest/logs`` unless ``log_to_driver``.
    ``http_port`` (default ``settings.port``) matters with ``settings.direct_ingress`` only."""
    import ray

    if not ray.is_initialized():
        port = (http_port or settings.port) if settings.direct_ingress else None
        os.environ.update(serve_env(log_to_driver, port))
        # On a loaded 2-core machine Ray's agents can take longer than the default to register.
        os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
        temp = (settings.state_dir / "ray").resolve()
        temp.mkdir(parents=True, exist_ok=True)
        private_ray_token()
        for attempt in range(1, 4):
            try:
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    _temp_dir=str(temp),
                    logging_level=logging.WARNING,
                    log_to_driver=log_to_driver,
                )
                break
            except Exception as exc:  # noqa: BLE001 - Ray's start-up timeouts on a loaded machine
                # The raylet gives its agents a fixed 30 s to come up; on oversubscribed cores
                # that is sometimes not enough: start a fresh node rather than fail.
                if "timed out during startup" not in str(exc) or attempt == 3:
                    raise
                log.warning("Ray start-up timed out (attempt %d/3); retrying", attempt)
                ray.shutdown()
        node_ip = ray.util.get_node_ip_address()
        if os.environ.get(LOCAL_RAY_ENV) == "0" and node_ip != "127.0.0.1":
            log.warning(
                "Ray was imported before %s=0 was set: this node's address is %s, so Ray's ports "
                "listen there, not on loopback (import services.gateway.local before ray)",
                LOCAL_RAY_ENV,
                node_ip,
            )
    return ray.get_runtime_context().gcs_address


def deploy(args: GatewayArgs, *, host: str, port: int, wait_ready_s: float = 180.0) -> str:
    """Start Serve's HTTP proxy on host:port, deploy the app, wait for ``/readyz``; its base URL."""
    from ray import serve

    proxy_port = port
    if args.gateway_settings().direct_ingress:
        # the ingress replica itself listens on `port` (see serve_env); Serve's proxy, which
        # still starts, gets a free port of its own
        import socket

        with socket.socket() as s:
            s.bind((host, 0))
            proxy_port = s.getsockname()[1]
    # idle keep-alive connections are closed after keep_alive_timeout_s (uvicorn has no header-read
    # timeout to set: docs/operations.md, "Slow clients")
    keep_alive = args.gateway_settings().keep_alive_timeout_s
    http = {"host": host, "port": proxy_port, "keep_alive_timeout_s": keep_alive}
    serve.start(http_options=http, detached=False)
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    wait_ready(url, wait_ready_s)
    return url


def wait_ready(url: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers 200; raise with its last answer otherwise."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    raise TimeoutError(f"gateway at {url} not ready after {timeout_s:.0f}s: {last}")

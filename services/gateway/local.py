"""Run the Serve application on a local Ray instance (``switchyard serve``, tests, benchmarks).

Ray's temp dir lives in the state dir; the cluster address and the builder args are written to
``<state_dir>/gateway/serve.json`` so ``switchyard serve swap`` can reconfigure the router in place.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx

from .deployments import APP_NAME, GatewayArgs, build_app
from .settings import GatewaySettings

log = logging.getLogger(__name__)


def state_file(settings: GatewaySettings) -> Path:
    return settings.state_dir.resolve() / "gateway" / "serve.json"


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
    serve.start(http_options={"host": host, "port": proxy_port}, detached=False)
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


def swap_router(args: GatewayArgs, router_ref: str) -> GatewayArgs:
    """Redeploy with a new router ref: only the router's user_config changes → in-place reconfigure."""
    from ray import serve

    new = args.model_copy(update={"router_ref": router_ref})
    serve.run(build_app(new), name=APP_NAME, route_prefix="/", blocking=False)
    return new


def save_state(settings: GatewaySettings, address: str, args: GatewayArgs, url: str) -> None:
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"address": address, "url": url, "args": args.model_dump(mode="json")}, indent=2)
    )


def load_state(settings: GatewaySettings) -> dict[str, Any]:
    path = state_file(settings)
    if not path.exists():
        raise FileNotFoundError(f"no running gateway recorded at {path}; start one with `switchyard serve`")
    return json.loads(path.read_text())

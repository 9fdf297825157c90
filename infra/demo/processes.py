"""The demo's child processes: start each in its own session, watch them, stop them all; and the
starters of the training run, the emulator, the streams worker, the gateway and the retrain
worker, each with this run's settings."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from .settings import ROOT, RunContext

log = logging.getLogger("switchyard.demo")


class DemoError(RuntimeError):
    """A bounded wait failed; the message names the log to read."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path


@dataclass
class Processes:
    """Child processes of the demo: each in its own session (its PID is its process group), so
    stopping one also stops what it spawned (Ray's raylet, etc.)."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        out = log_path.open("ab")
        p = subprocess.Popen(  # noqa: S603 - our own CLI
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        log.info("started %s (pid %d): %s", name, p.pid, " ".join(cmd))
        return proc

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise DemoError(f"{p.name} exited with code {p.popen.returncode}; see {p.log_path}")

    def stop_all(self) -> None:
        """SIGTERM each (in reverse start order), wait, then SIGKILL its process group."""
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            # the process group (its PID) catches what it spawned and left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.popen.pid, signal.SIGKILL)
            if p.popen.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=5)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout_s: float,
    procs: Processes,
    log_hint: Path,
    every: float = 1.0,
) -> Any:
    """Poll ``check()`` until truthy; raise :class:`DemoError` naming ``log_hint`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            got = check()
            if got:
                return got
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(every)
    raise DemoError(f"{what} not ready after {timeout_s:.0f}s ({last or 'no answer'}); see {log_hint}")


def readyz(url: str) -> dict[str, Any]:
    """The gateway's ``/readyz`` body (``{}`` while it is not ready)."""
    r = httpx.get(url + "/readyz", timeout=5)
    return r.json() if r.status_code == 200 else {}


# --------------------------------------------------------------------------- inputs


def emulator_catalog(path: Path, emulator_base: str) -> Path:
    """The built-in catalog with every provider pointed at this run's emulator."""
    from services.catalog import load_catalog

    raw = yaml.safe_load((ROOT / "services" / "catalog.yaml").read_text())
    for p in raw["providers"]:
        p["base_url"] = emulator_base + urlsplit(p["base_url"]).path  # keeps /v1 and /p/<provider>
    path.write_text(yaml.safe_dump(raw))
    load_catalog(path)
    return path


def reference_acceptance(data_dir: Path) -> dict[str, dict[str, float]]:
    """Per task and graded model: the benchmark acceptance (the quality CUSUM's reference)."""
    from training.data import load_all

    bench = load_all(data_dir)
    labels = bench.labels()
    ref: dict[str, dict[str, float]] = {}
    for task, idx in bench.frame.groupby("task").groups.items():
        lab = labels.loc[idx]
        ref[str(task)] = {
            m: float((lab[m].dropna() >= 0.5).mean()) for m in lab.columns if lab[m].notna().any()
        }
    return ref


# --------------------------------------------------------------------------- starters


def start_initial_training(procs: Processes, ctx: RunContext) -> Proc:
    """``switchyard train run --no-kafka`` without the new task, registered as champion."""
    reason = f"initial router (without {', '.join(ctx.cfg.story_tasks)})"
    return procs.start(
        "train-initial", [ctx.cli, "train", "run", "--reason", reason, "--no-kafka"], ctx.train_env
    )


def start_emulator(procs: Processes, ctx: RunContext, port: int) -> Proc:
    cmd = [ctx.cli, "emulator", "--port", str(port), "--speed", str(ctx.cfg.emulator_speed)]
    return procs.start("emulator", cmd, ctx.base_env)


def start_streams(procs: Processes, ctx: RunContext, port: int, webhook_url: str, reference: Path) -> Proc:
    """The streams worker, paging ``webhook_url``, with the benchmark acceptance as reference."""
    cmd = [
        ctx.cli,
        "stream",
        "worker",
        "--web-port",
        str(port),
        "--app-id",
        f"switchyard-demo-{ctx.run_id}",
        "--webhook-url",
        webhook_url,
        "--reference",
        str(reference),
    ]
    return procs.start("streams", cmd, ctx.streams_env)


def start_gateway(procs: Processes, ctx: RunContext, port: int, catalog: Path) -> Proc:
    """``switchyard serve`` with the run's champion alias and the emulator catalog."""
    cmd = [
        ctx.cli,
        "serve",
        "--port",
        str(port),
        "--router",
        f"models:/{ctx.model_name}@champion",
        "--catalog",
        str(catalog),
        "--topic-prefix",
        ctx.prefix,
    ]
    return procs.start("gateway", cmd, ctx.gateway_env)


def start_retrain_worker(procs: Processes, ctx: RunContext, catalog: Path, gateway_url: str) -> Proc:
    """``switchyard train worker``: it moves the alias the gateway follows, then waits until the
    gateway's ``/readyz`` reports the new version."""
    env = {
        **ctx.train_env,
        "SWITCHYARD_TRAIN_GATEWAY_URL": gateway_url,
        "SWITCHYARD_TRAIN_CATALOG": str(catalog),
        "SWITCHYARD_TRAIN_GROUP_ID": f"switchyard-retrain-demo-{ctx.run_id}",
        "SWITCHYARD_TRAIN_BUDGET_USD": str(ctx.cfg.budget_usd),
        "SWITCHYARD_TRAIN_BUDGET_CALLS": str(ctx.cfg.budget_calls),
    }
    return procs.start("retrain-worker", [ctx.cli, "train", "worker"], env)


def write_reference(ctx: RunContext) -> Path:
    """The streams worker's reference acceptance, as a JSON file in the run's log dir."""
    ref = ctx.log_dir / "reference.json"
    ref.write_text(json.dumps(reference_acceptance(ctx.data_dir)))
    return ref

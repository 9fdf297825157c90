"""Processes of ``bench/peer.py``: the stub upstream, LiteLLM's proxy (in its own venv) and the
Switchyard gateway, each started pinned to a core, inspected (allowed CPUs, nice value, CPU
seconds of its whole process tree) and stopped by its own pid."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "bench" / "peer-requirements.txt"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# One API key for every gateway (LiteLLM's master key, Switchyard's key): both check it per request.
KEY = "sk-peer-" + hashlib.sha256(b"switchyard peer bench").hexdigest()


# -- /proc ------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (f := _stat(int(d))):
            children.setdefault(int(f[1]), []).append(int(d))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants."""
    total = 0.0
    for p in descendants(pid):
        if f := _stat(p):
            total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


def _short(cmd: str) -> str:
    """``ray::ServeReplica:switchyard:ChatIngress``, ``raylet``, ``dashboard.py``, ...: a process's kind."""
    argv = cmd.split(" ")
    if argv[0].startswith("ray::"):
        return argv[0]
    if "python" not in Path(argv[0]).name:
        return Path(argv[0]).name  # raylet, gcs_server, litellm, switchyard
    for a in argv[1:3]:
        if a.endswith(".py"):
            return Path(a).name
    return Path(argv[0]).name


# -- processes -----------------------------------------------------------------------------------------


@dataclass
class Gateway:
    """A process this bench started (with its descendants), its URL and how it stopped."""

    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    version: str = ""
    shutdown: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def processes(self) -> list[dict[str, Any]]:
        """Every process of this gateway: kind, allowed CPUs, nice value."""
        out = []
        for p in descendants(self.pid):
            f = _stat(p)
            try:
                cpus = next(
                    ln.split(":", 1)[1].strip()
                    for ln in Path(f"/proc/{p}/status").read_text().splitlines()
                    if ln.startswith("Cpus_allowed_list")
                )
            except (OSError, StopIteration):
                continue
            out.append(
                {"pid": p, "kind": _short(cmdline(p)), "cpus": cpus, "nice": int(f[16]) if f else None}
            )
        return out

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds so far of each kind of process of this gateway."""
        out: dict[str, float] = {}
        for p in descendants(self.pid):
            if f := _stat(p):
                k = _short(cmdline(p))
                out[k] = out.get(k, 0.0) + (int(f[11]) + int(f[12])) / CLK_TCK
        return out

    def stop(self, timeout_s: float = 90.0) -> None:
        """SIGTERM to the process this bench started, wait; then SIGKILL whatever of its own tree
        (recorded before, same command line) is left. Records how long it took and the log's
        shutdown warnings."""
        if self.proc.poll() is not None:
            self.shutdown = {"already_exited": self.proc.returncode}
            return
        tree = {p: cmdline(p) for p in descendants(self.pid)}
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        took = time.perf_counter() - t0
        time.sleep(1.0)
        left = [p for p, c in tree.items() if c and cmdline(p) == c]
        for p in left:
            os.kill(p, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        self.shutdown = {
            "exit_s": round(took, 1),
            "returncode": self.proc.returncode,
            "killed_leftovers": [_short(tree[p]) for p in left],
            "warnings": [ln[-300:] for ln in lines if "shut down" in ln.lower() or "failed to" in ln.lower()][
                -5:
            ],
        }


def _start(name: str, cmd: list[str], env: dict[str, str], log_path: Path, cpu: str) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(  # noqa: S603
        ["taskset", "-c", cpu, *cmd],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(gw: Gateway, path: str, timeout_s: float, headers: dict | None = None) -> None:
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            break
        try:
            r = httpx.get(gw.url + path, timeout=5, headers=headers)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1.0)
    tail = gw.log_path.read_text(errors="replace")[-3000:] if gw.log_path.exists() else ""
    gw.stop(10)
    raise RuntimeError(f"{gw.name} at {gw.url} not ready ({last}); log tail:\n{tail}")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LITELLM_"))}
    env.update(extra)
    return env


def ensure_litellm(state_dir: Path) -> Path:
    """The python of LiteLLM's own venv (``<state>/litellm-venv``), created and filled from
    ``bench/peer-requirements.txt`` when missing or when the requirements changed."""
    venv = state_dir / "litellm-venv"
    py = venv / "bin" / "python"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    marker = venv / ".requirements-sha256"
    if py.exists() and marker.exists() and marker.read_text() == want:
        return py
    print(f"installing LiteLLM into {venv} (first use) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        cmd = [str(uv), "pip", "install", "--python", str(py), "-r", str(REQUIREMENTS)]
    else:
        cmd = [str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)]
    subprocess.run(cmd, check=True)  # noqa: S603
    marker.write_text(want)
    return py


def start_stub(state_dir: Path, port: int, cpu: str, delay_ms: float = 0.0) -> Gateway:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "peer_stub.py"),
        "--port",
        str(port),
        "--delay-ms",
        str(delay_ms),
    ]
    log = state_dir / "logs" / "stub.log"
    gw = Gateway("stub", f"http://127.0.0.1:{port}", _start("stub", cmd, _clean_env(), log, cpu), log)
    _wait(gw, "/healthz", 30)
    return gw


def start_litellm(py: Path, state_dir: Path, port: int, stub_url: str, model: str, cpu: str) -> Gateway:
    """LiteLLM's proxy, one worker, one model name pointed at the stub; master key, no database."""
    cfg = state_dir / "litellm.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": model,
                        "litellm_params": {
                            "model": f"openai/{model}",
                            "api_base": f"{stub_url}/v1",
                            "api_key": "sk-stub",
                        },
                    }
                ],
                "litellm_settings": {"drop_params": True, "telemetry": False},
                "general_settings": {"master_key": KEY},
            }
        )
    )
    cmd = [
        str(py.parent / "litellm"),
        "--config",
        str(cfg),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = _clean_env(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_PROXY="*")
    log = state_dir / "logs" / "litellm.log"
    gw = Gateway("litellm", f"http://127.0.0.1:{port}", _start("litellm", cmd, env, log, cpu), log)
    _wait(gw, "/health/liveliness", 180)
    gw.version = subprocess.run(  # noqa: S603
        [str(py), "-c", "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return gw


def default_router(state_dir: Path, backend: str = "static") -> str:
    """The production CPU recipe (mlp on the static encoder, scored in the ingress; ``onnx``: the
    MiniLM ONNX int8 router in the router deployment), trained once on 200 rows per dataset into
    the state dir."""
    flags = ["--backend", "static"] if backend == "static" else ["--backend", "onnx", "--int8"]
    out = state_dir / ("router-mlp-static" if backend == "static" else "router-mlp-onnx-int8")
    if not (out / "manifest.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "switchyard.cli",
            "train",
            "router",
            "--kind",
            "mlp",
            "--max-rows",
            "200",
            *flags,
            "--out",
            str(out),
        ]
        subprocess.run(cmd, cwd=ROOT, check=True)  # noqa: S603
    return str(out.resolve())


def start_switchyard(
    state_dir: Path, port: int, stub_url: str, router_ref: str, cpu: str, extra_env: dict[str, str]
) -> Gateway:
    """``switchyard serve`` with every catalog provider pointed at the stub; events spool to disk
    (the Kafka bootstrap is a closed port of ours) unless ``extra_env`` says otherwise."""
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from gateway_stack import emulator_catalog

    sy_state = (state_dir / "switchyard").resolve()
    sy_state.mkdir(parents=True, exist_ok=True)
    catalog = emulator_catalog(sy_state, stub_url, first_token_s=20.0)
    env = _clean_env(
        SWITCHYARD_GATEWAY_STATE_DIR=str(sy_state),
        SWITCHYARD_GATEWAY_API_KEYS=f'["{KEY}"]',
        SWITCHYARD_GATEWAY_DIRECT_INGRESS="true",
        SWITCHYARD_KAFKA_BOOTSTRAP=f"127.0.0.1:{port + 9}",
        SWITCHYARD_UPSTREAM_OPENAI_KEY="sk-stub",
        SWITCHYARD_UPSTREAM_ANTHROPIC_KEY="sk-stub",
    )
    env.update(extra_env)
    cmd = [
        str(Path(sys.executable).parent / "switchyard"),
        "serve",
        "--router",
        router_ref,
        "--catalog",
        str(catalog),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = state_dir / "logs" / "switchyard.log"
    gw = Gateway("switchyard", f"http://127.0.0.1:{port}", _start("switchyard", cmd, env, log, cpu), log)
    _wait(gw, "/readyz", 300)
    gw.version = router_ref
    return gw

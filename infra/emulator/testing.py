"""Start a real emulator subprocess for tests and benchmarks, and talk to its admin endpoints.

Usage (e.g. a session fixture in a test module or conftest)::

    import pytest
    from infra.emulator.testing import run_emulator

    @pytest.fixture(scope="session")
    def emulator(data_dir):
        with run_emulator(data_dir=data_dir) as emu:   # speed=0: no added latency
            yield emu

    def test_x(emulator):
        client = openai.OpenAI(base_url=emulator.openai_base_url, api_key="test")
        emulator.set_faults("gpt-4-1106-preview", error_rate=1.0, error_statuses=[503], max_faults=2)
        emulator.add_drift("mistralai/Mixtral-8x7B-Instruct-v0.1", "gsm8k")
        emulator.truth(prompt_hash, model)      # ground truth, drift included
        emulator.reset()                        # back to the start config, counters cleared

The parent binds a free port on 127.0.0.1 and hands the listening socket to the child
(``--fd``), so there is no race for the port; :func:`run_emulator` returns once ``/healthz``
answers (the corpus loads in a few seconds) and stops the process on exit. Catalog ids are served
as models (``services/catalog.yaml``: point a catalog's provider ``base_url`` at
``emulator.openai_base_url`` / ``emulator.base_url``) plus the judge ``switchyard/judge``.
Use a fresh ``reset()`` between tests that set faults or drift.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


class EmulatorStartError(RuntimeError):
    """The emulator process exited or did not become ready in time (carries its log tail)."""


@dataclass
class EmulatorHandle:
    """A running emulator: its URLs, process and admin helpers (sync, httpx)."""

    port: int
    process: subprocess.Popen
    log_path: Path
    _http: httpx.Client = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the Anthropic base URL; admin endpoints live here)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (the OpenAI client's base_url)."""
        return self.base_url + "/v1"

    def provider_base_url(self, provider: str, kind: str = "openai") -> str:
        """Where the emulator sells models as catalog provider ``provider`` (its offers' prices,
        its own faults): ``/p/<provider>``, plus ``/v1`` for the OpenAI protocol."""
        return f"{self.base_url}/p/{provider}" + ("/v1" if kind == "openai" else "")

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._http.request(method, path, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"emulator {method} {path} -> {resp.status_code}: {resp.text}")
        return resp.json()

    def set_faults(self, model: str, provider: str | None = None, **spec: Any) -> dict:
        """Set a model's faults (FaultSpec fields: error_rate, error_statuses, rate_limit_rate,
        retry_after_s, hang_rate, hang_s, malformed_rate, stream_cut_rate, stream_cut_after,
        stream_cut_mode, max_faults); ``model="*"`` for every model without its own rule;
        ``provider``: only for requests under that provider's prefix (:meth:`provider_base_url`)."""
        where = {"provider": provider} if provider else {}
        return self._call("POST", "/emulator/faults", json={"model": model, **where, **spec})

    def clear_faults(self, model: str | None = None, provider: str | None = None) -> dict:
        params = {k: v for k, v in (("model", model), ("provider", provider)) if v}
        return self._call("DELETE", "/emulator/faults", params=params or None)

    def add_drift(self, model: str, task: str, wrong_rate: float = 1.0, start_in_s: float = 0.0) -> dict:
        """From now (+start_in_s) ``model`` answers ``task`` (task or dataset name) wrongly."""
        return self._call(
            "POST",
            "/emulator/drift",
            json={"model": model, "task": task, "wrong_rate": wrong_rate, "start_in_s": start_in_s},
        )

    def set_speed(self, speed: float) -> dict:
        return self._call("POST", "/emulator/latency", json={"speed": speed})

    def truth(self, prompt_hash: str, model: str | None = None) -> dict:
        params = {"prompt_hash": prompt_hash, **({"model": model} if model else {})}
        return self._call("GET", "/emulator/truth", params=params)

    def stats(self) -> dict:
        return self._call("GET", "/emulator/stats")

    def feedback(self) -> list[dict]:
        return self._call("GET", "/emulator/feedback")["feedback"]

    def reset(self) -> dict:
        return self._call("POST", "/emulator/reset")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""


def _free_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


@contextmanager
def run_emulator(
    *,
    data_dir: Path | str | None = None,
    speed: float = 0.0,
    seed: int = 0,
    config: dict | Path | None = None,
    datasets: list[str] | None = None,
    catalog: Path | None = None,
    chunk_words: int | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 90.0,
    log_path: Path | None = None,
    port: int = 0,
) -> Iterator[EmulatorHandle]:
    """Run ``python -m infra.emulator`` on a free port; yield an :class:`EmulatorHandle`; stop it.

    ``config`` is a start config (dict or YAML/JSON path: ``faults``, ``drift``, ``latency``);
    ``speed=0`` (default) adds no latency. The server log goes to ``log_path`` (default a temp
    file; its tail is in the error if the start fails). ``port`` 0 (default): a free one.
    """
    tmp = tempfile.TemporaryDirectory(prefix="switchyard-emulator-")
    log_file = Path(log_path) if log_path else Path(tmp.name) / "emulator.log"
    if isinstance(config, dict):
        cfg_path = Path(tmp.name) / "config.json"
        cfg_path.write_text(json.dumps(config), encoding="utf-8")
        config = cfg_path
    sock = _free_socket(port)
    port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "infra.emulator",
        "--fd",
        str(sock.fileno()),
        "--speed",
        str(speed),
        "--seed",
        str(seed),
        "--log-level",
        "warning",
    ]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    for d in datasets or []:
        cmd += ["--dataset", d]
    if config is not None:
        cmd += ["--config", str(config)]
    if catalog is not None:
        cmd += ["--catalog", str(catalog)]
    if chunk_words is not None:
        cmd += ["--chunk-words", str(chunk_words)]
    out = log_file.open("ab")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        pass_fds=[sock.fileno()],
        env={**os.environ, **(env or {})},
    )
    sock.close()
    handle = EmulatorHandle(
        port, proc, log_file, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    )
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise EmulatorStartError(f"emulator exited with {proc.returncode}:\n{handle.log_tail()}")
            try:
                if handle._http.get("/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise EmulatorStartError(f"emulator not ready after {ready_timeout_s}s:\n{handle.log_tail()}")
            time.sleep(0.1)
        yield handle
    finally:
        handle._http.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        out.close()
        tmp.cleanup()

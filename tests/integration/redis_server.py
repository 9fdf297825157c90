"""A real redis-server for the tests of limits shared across replicas: Debian's ``redis-server``
(``.ci/run`` installs it), started on a free 127.0.0.1 port in the test's own directory, no
persistence, stopped (and only it: its PID and command line are checked) at the end.

Without the binary the tests skip locally and fail under ``CI=true``."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclass
class RedisServer:
    """One redis-server process this test session started."""

    port: int
    directory: Path
    password: str
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
                "--requirepass", self.password,
                "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log").read_text()[-2000:]
                raise RuntimeError(f"redis-server exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                    seen = b""
                    while b"+PONG" not in seen:
                        chunk = s.recv(64)
                        if not chunk:
                            break
                        seen += chunk
                    if b"+PONG" in seen:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 20 s")

    def stop(self) -> None:
        """SIGTERM to the process we started, after checking /proc that it is still that one."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # redis-server retitles itself ("/usr/bin/redis-server 127.0.0.1:PORT"): binary and port
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline and str(self.port).encode() in cmdline, cmdline
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _free_port(low: int = 29000, high: int = 29999) -> int:
    """A port nothing listens on, from the range the test machines leave to tests."""
    start = random.randint(low, high)
    for i in range(high - low + 1):
        port = low + (start - low + i) % (high - low + 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


@pytest.fixture(name="redis")
def redis_fixture(tmp_path_factory) -> Iterator[RedisServer]:
    """``redis``: a fresh, password-protected redis-server for one test (import this function into
    the test module to use it)."""
    if shutil.which("redis-server") is None:
        msg = "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        if IN_CI:
            pytest.fail(msg + " — CI requires it", pytrace=False)
        pytest.skip(msg)
    password = "t3st-" + os.urandom(6).hex()
    server = RedisServer(_free_port(), tmp_path_factory.mktemp("redis"), password=password)
    server.start()
    try:
        yield server
    finally:
        server.stop()

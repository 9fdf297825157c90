"""The local stack: a single-node KRaft Apache Kafka broker and an MLflow tracking server.

Both run as background processes on 127.0.0.1 with their state, logs and pid files under the
state directory. ``up`` is idempotent (a running, healthy service is left alone), ``down``
stops only the processes this stack started (pid files, verified against /proc), and every
readiness wait has a timeout whose error points at the log file.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.contracts.settings import StackSettings

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A service of the local stack failed to start or stop."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    ready: bool
    endpoint: str
    log_file: Path

    def line(self) -> str:
        state = "ready" if self.ready else ("starting/unhealthy" if self.running else "stopped")
        pid = f"pid {self.pid}" if self.running else "no process"
        return f"{self.name:7s} {state:18s} {pid:12s} {self.endpoint}  (log: {self.log_file})"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class _Service:
    """A background process identified by a pid file and a marker in its command line."""

    name: str

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.dir = (settings.state_dir / self.name).resolve()
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log_file = self.dir / f"{self.name}.log"

    # -- to implement -------------------------------------------------------------------------
    endpoint: str = ""

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time set-up before the first start (storage formatting, directories)."""

    def is_ready(self) -> bool:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- shared -------------------------------------------------------------------------------
    def marker(self) -> str:
        return str(self.dir)

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        # A recycled pid is not ours: the command line must carry our state directory.
        return pid if self.marker() in _cmdline(pid) else None

    def status(self) -> ServiceStatus:
        pid = self.pid()
        running = pid is not None
        return ServiceStatus(
            self.name, pid, running, running and self.is_ready(), self.endpoint, self.log_file
        )

    def start(self) -> None:
        self.wait_ready(self.launch())

    def launch(self) -> subprocess.Popen | None:
        """Start the process unless it runs already; returns the new process, if any."""
        proc: subprocess.Popen | None = None
        if self.pid() is not None:
            log.info("%s already running (pid %s)", self.name, self.pid())
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.prepare()
            with self.log_file.open("ab") as out:
                proc = subprocess.Popen(  # noqa: S603 - fixed argv built from settings
                    self.command(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.dir,
                    env=self.env(),
                    start_new_session=True,
                )
            self.pid_file.write_text(str(proc.pid))
            log.info("started %s (pid %s), log %s", self.name, proc.pid, self.log_file)
        return proc

    def wait_ready(self, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + self.s.ready_timeout_s
        while time.monotonic() < deadline:
            exited = proc.poll() is not None if proc is not None else self.pid() is None
            if exited:
                raise StackError(
                    f"{self.name} exited during start-up; see {self.log_file}\n--- last lines ---\n"
                    + _tail(self.log_file)
                )
            if self.is_ready():
                log.info("%s ready at %s", self.name, self.endpoint)
                return
            time.sleep(0.5)
        raise StackError(
            f"{self.name} not ready at {self.endpoint} after {self.s.ready_timeout_s:.0f}s; "
            f"see {self.log_file}\n--- last lines ---\n{_tail(self.log_file)}"
        )

    def stop(self, timeout_s: float = 45.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        log.info("stopping %s (pid %s)", self.name, pid)
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._group_alive(pid):
            time.sleep(0.3)
        if self._group_alive(pid):
            log.warning("%s did not stop in %.0fs; killing", self.name, timeout_s)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.5)
        self.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # Zombies of our own children count as gone.
        try:
            os.waitpid(pgid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            stat = Path(f"/proc/{pgid}/stat").read_text()
            return stat.split(")")[-1].split()[0] != "Z"
        except OSError:
            return any(_pgid_of(p) == pgid for p in _all_pids())


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _kafka_uuid() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class Kafka(_Service):
    name = "kafka"

    @property
    def endpoint(self) -> str:  # type: ignore[override]
        return self.s.kafka_bootstrap

    def libs(self) -> Path:
        libs = self.s.kafka_libs.resolve()
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka jars not found in {libs}; run `make setup` first")
        return libs

    def properties(self) -> str:
        s = self.s
        return "\n".join(
            [
                "# generated by switchyard stack: single-node KRaft (broker + controller)",
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{s.host}:{s.kafka_controller_port}",
                f"listeners=PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://{s.host}:{s.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={self.dir / 'data'}",
                "num.partitions=3",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.segment.bytes=67108864",
                "",
            ]
        )

    def log4j(self) -> str:
        return "\n".join(
            [
                "status = warn",
                "appender.file.type = File",
                "appender.file.name = FILE",
                f"appender.file.fileName = {self.dir / 'server.log'}",
                "appender.file.layout.type = PatternLayout",
                "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.file.ref = FILE",
                "logger.kafka.name = kafka",
                "logger.kafka.level = INFO",
                "logger.kafkaorg.name = org.apache.kafka",
                "logger.kafkaorg.level = WARN",
                "",
            ]
        )

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.s.kafka_heap}",
            f"-Xms{self.s.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dswitchyard.state={self.dir}",
            "-cp",
            f"{self.libs()}/*",
            main,
            *args,
        ]

    def prepare(self) -> None:
        (self.dir / "server.properties").write_text(self.properties())
        (self.dir / "log4j2.properties").write_text(self.log4j())
        if (self.dir / "data" / "meta.properties").exists():
            return
        log.info("formatting Kafka storage in %s", self.dir / "data")
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={_kafka_uuid()}",  # one token: a base64 id may start with "-"
            "-c",
            str(self.dir / "server.properties"),
        )
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir)  # noqa: S603
        if res.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{res.stdout}\n{res.stderr}")

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.dir / "server.properties"))

    def is_ready(self) -> bool:
        return kafka_ready(self.s.kafka_bootstrap, timeout_s=5.0)


def kafka_ready(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when the broker answers a metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            await asyncio.wait_for(admin.list_topics(), timeout_s)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        finally:
            try:
                await admin.close()
            except Exception:  # noqa: BLE001
                pass

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(probe())


class MLflow(_Service):
    name = "mlflow"

    @property
    def endpoint(self) -> str:  # type: ignore[override]
        return self.s.mlflow_uri

    def prepare(self) -> None:
        (self.dir / "artifacts").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.dir / "artifacts"),
            "--host",
            self.s.host,
            "--port",
            str(self.s.mlflow_port),
            "--workers",
            "1",
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env["DO_NOT_TRACK"] = "true"
        return env

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False


def services(settings: StackSettings) -> list[_Service]:
    return [Kafka(settings), MLflow(settings)]


def up(settings: StackSettings) -> list[ServiceStatus]:
    """Start every service that is not running (all at once) and wait until all are ready."""
    launched = [(svc, svc.launch()) for svc in services(settings)]
    for svc, proc in launched:
        svc.wait_ready(proc)
    return status(settings)


def down(settings: StackSettings) -> None:
    """Stop the services this stack started (MLflow first, then Kafka)."""
    for svc in reversed(services(settings)):
        svc.stop()


def status(settings: StackSettings) -> list[ServiceStatus]:
    return [svc.status() for svc in services(settings)]

"""Process handling of the local stack, with real processes (no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack import Kafka, StackError, _Service
from services.contracts.settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS = pytest.mark.slow  # starts real processes: the slow tier, not `make test-unit`


class _NeverReady(_Service):
    name = "sleeper"
    endpoint = "nowhere:0"

    def command(self) -> list[str]:
        return [sys.executable, "-c", f"import time; print('booting {self.dir}', flush=True); time.sleep(60)"]

    def is_ready(self) -> bool:
        return False


class _Crasher(_NeverReady):
    name = "crasher"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import sys; print('port already in use', flush=True); sys.exit(3)"]


@SUBPROCESS
def test_not_ready_in_time_points_at_the_log(tmp_path: Path) -> None:
    svc = _NeverReady(StackSettings(state_dir=tmp_path, ready_timeout_s=1.5))
    with pytest.raises(StackError) as info:
        svc.start()
    msg = str(info.value)
    assert "not ready at nowhere:0" in msg and str(svc.log_file) in msg and "booting" in msg
    pid = svc.pid()
    assert pid is not None  # still running: `down` must be able to stop it
    svc.stop(timeout_s=5)
    assert svc.pid() is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@SUBPROCESS
def test_crash_at_start_shows_the_log_tail(tmp_path: Path) -> None:
    svc = _Crasher(StackSettings(state_dir=tmp_path, ready_timeout_s=10))
    with pytest.raises(StackError, match=r"exited during start-up(.|\n)*port already in use"):
        svc.start()


@SUBPROCESS
def test_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    svc = _NeverReady(StackSettings(state_dir=tmp_path))
    svc.dir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        svc.pid_file.write_text(str(other.pid))
        assert svc.pid() is None  # its command line lacks our state dir: never signal it
        svc.stop()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_kafka_without_jars_says_run_setup(tmp_path: Path) -> None:
    settings = StackSettings(state_dir=tmp_path, kafka_libs_dir=tmp_path / "empty")
    with pytest.raises(StackError, match="make setup"):
        Kafka(settings).start()


def test_generated_kraft_config(tmp_path: Path) -> None:
    props = Kafka(
        StackSettings(state_dir=tmp_path, kafka_port=19999, kafka_controller_port=19998)
    ).properties()
    assert "process.roles=broker,controller" in props
    assert "listeners=PLAINTEXT://127.0.0.1:19999,CONTROLLER://127.0.0.1:19998" in props
    assert "auto.create.topics.enable=false" in props
    assert f"log.dirs={tmp_path.resolve() / 'kafka' / 'data'}" in props


@SUBPROCESS
def test_data_fetch_skips_when_present(data_dir: Path) -> None:
    env = {**os.environ, "SWITCHYARD_DATA_DIR": str(data_dir), "SWITCHYARD_DATA_DOWNLOAD": "false"}
    res = subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "data", "fetch"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "nothing to download" in res.stdout


@SUBPROCESS
def test_data_fetch_refuses_when_missing_and_offline(tmp_path: Path) -> None:
    env = {**os.environ, "SWITCHYARD_DATA_DIR": str(tmp_path), "SWITCHYARD_DATA_DOWNLOAD": "false"}
    res = subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "data", "fetch"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 1
    assert "downloads are off" in res.stderr


def test_download_list_covers_every_local_file(data_dir: Path) -> None:
    from infra.datafetch import sources

    wanted = set(sources())
    local = {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.suffix in {".csv", ".jsonl"}}
    assert local <= wanted, f"files the downloader would not fetch: {sorted(local - wanted)}"
    assert all(url.startswith("https://raw.githubusercontent.com/") for url in sources().values())


def test_a_cluster_id_starting_with_a_dash_is_not_read_as_an_option(tmp_path: Path, monkeypatch) -> None:
    import infra.stack as stack

    seen: list[list[str]] = []

    def run(cmd, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(stack, "_kafka_uuid", lambda: "-Ab3x_Qk9T2uJm0w1nRz5A")
    monkeypatch.setattr(stack.subprocess, "run", run)
    (tmp_path / "kafka_2.13-4.4.0.jar").touch()  # what `make setup` puts there
    kafka = Kafka(StackSettings(state_dir=tmp_path, kafka_libs_dir=tmp_path))
    kafka.dir.mkdir(parents=True, exist_ok=True)
    kafka.prepare()
    [cmd] = seen
    assert "--cluster-id=-Ab3x_Qk9T2uJm0w1nRz5A" in cmd and "-t" not in cmd

"""The gateway's container image serves: built with buildah (``infra/images.py``, as ``make images``
does), started with ``buildah run`` (chroot isolation: the host's network, so the gateway listens
on 127.0.0.1 and reaches the emulator and Kafka there), it answers a chat completion through a
static router mounted into the container, and the call event reaches Kafka.

The image holds no torch (its build checks that); this proves the rest of the gateway's serving path
(Ray Serve, the router replicas, the static encoder, the providers, the emitter) works with what it
has. Set ``SWITCHYARD_TEST_IMAGE`` to test an image already built instead of building one. buildah
(and debootstrap, for the base image) must be installed; in CI a missing one fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gateway_stack import consume_all, emulator_catalog, make_router

from infra import images
from services.contracts.topics import CALLS, FEEDBACK

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-image-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the PID, a process's identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root`` → its start time (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = _start_time(pid)
        if started is not None:
            out[pid] = started
            todo.extend(children.get(pid, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _signal_ours(procs: dict[int, str], sig: int) -> None:
    """Signal each process we started (same PID *and* start time, so never a reused PID)."""
    for pid, started in procs.items():
        if _start_time(pid) == started:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def gateway_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The gateway image: SWITCHYARD_TEST_IMAGE, else built now (the base image is made once per
    machine; the Python packages come from buildah's cache mounts after the first build)."""
    ref = os.environ.get("SWITCHYARD_TEST_IMAGE")
    need = images.missing_tools(need_base=False)
    if not need and not ref and not images.image_exists(images.BASE_IMAGE):
        need = images.missing_tools(need_base=True)  # the base image is made with debootstrap
    if os.geteuid() != 0:
        need.append("root (buildah with vfs storage and chroot isolation)")
    if need:
        msg = f"the gateway image test needs {', '.join(need)} (apt-get install buildah debootstrap)"
        if IN_CI:
            pytest.fail(msg + " — CI requires it", pytrace=False)
        pytest.skip(msg)
    if ref:
        return ref
    state = Path(os.environ.get("SWITCHYARD_STATE_DIR", ROOT / ".state")).resolve()
    t0 = time.perf_counter()
    built = images.build(["gateway"], version=images.project_version(), state_dir=state, quiet=True)
    print(f"built {built[0].tag} ({built[0].size_mb:.0f} MB) in {time.perf_counter() - t0:.0f}s")
    return built[0].tag


@pytest.fixture(scope="module")
def static_router(data_dir: Path) -> Path:
    # the same cached artefact the gateway tests train (the real training command)
    return make_router("mlp", ROOT / ".state" / "gateway-test" / "router-mlp-static", backend="static")


@pytest.fixture(scope="module")
def emulator(data_dir: Path):
    from infra.emulator.testing import run_emulator

    with run_emulator(data_dir=data_dir) as emu:
        yield emu


@pytest.fixture(scope="module")
def prefix(kafka_bootstrap: str) -> str:
    from services.contracts.topic_admin import apply_topics

    p = f"img{uuid.uuid4().hex[:8]}."
    asyncio.run(apply_topics(kafka_bootstrap, p, specs=(CALLS, FEEDBACK), max_replication=1))
    return p


@pytest.fixture(scope="module")
def gateway(
    gateway_image: str,
    static_router: Path,
    emulator,
    kafka_bootstrap: str,
    prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """``switchyard serve`` in a container of the image, on a free 127.0.0.1 port; stopped after."""
    tmp = tmp_path_factory.mktemp("image")
    config = tmp / "config"
    config.mkdir()
    emulator_catalog(config, emulator.base_url)
    # a copy the container's user (uid 1000) can read: training writes some artefact files 0600
    router = shutil.copytree(static_router, tmp / "router")
    for path in (router, *router.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = _free_port()
    ctr = images.buildah(
        "from", "--name", f"switchyard-image-test-{uuid.uuid4().hex[:8]}", gateway_image
    ).strip()
    env = {
        "SWITCHYARD_GATEWAY_API_KEYS": json.dumps([KEY]),
        "SWITCHYARD_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SWITCHYARD_GATEWAY_EXPLORE_ENABLED": "false",
    }
    cmd = [
        "buildah",
        *images.STORAGE,
        "run",
        "--isolation",
        "chroot",
        "--volume",
        f"{config}:/config:ro",
        "--volume",
        f"{router}:/router:ro",
        *[a for k, v in env.items() for a in ("--env", f"{k}={v}")],
        ctr,
        "--",
        "switchyard",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--catalog",
        "/config/catalog.yaml",
        "--router",
        "/router",
        "--topic-prefix",
        prefix,
    ]
    log = (tmp / "gateway.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 600
        while True:
            seen.update(_descendants(proc.pid))
            if proc.poll() is not None:
                raise AssertionError(f"the gateway container exited ({proc.returncode}):\n{_tail(tmp)}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway in the image was not ready after 600s:\n{_tail(tmp)}")
            time.sleep(2)
        seen.update(_descendants(proc.pid))
        yield url
    finally:
        seen.update(_descendants(proc.pid))
        # `switchyard serve` stops on SIGTERM (it shuts Serve and Ray down); it is the process
        # inside the container whose command line says so
        serve = {p: s for p, s in seen.items() if "switchyard serve" in _cmdline(p)}
        _signal_ours(serve, signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            _signal_ours({proc.pid: _start_time(proc.pid) or ""}, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_ours({proc.pid: _start_time(proc.pid) or ""}, signal.SIGKILL)
                proc.wait(timeout=10)
        _signal_ours(seen, signal.SIGKILL)  # anything of ours still alive (Ray's processes)
        log.close()
        subprocess.run(["buildah", *images.STORAGE, "rm", ctr], capture_output=True)  # noqa: S603


def _tail(tmp: Path, n: int = 4000) -> str:
    try:
        return (tmp / "gateway.log").read_text(errors="replace")[-n:]
    except OSError:
        return ""


def test_gateway_image_answers_a_chat_completion(
    gateway: str, data_dir: Path, kafka_bootstrap: str, prefix: str
) -> None:
    from training.data import load_gsm8k

    prompt = load_gsm8k(data_dir).frame.iloc[3]["prompt"]
    client = openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="switchyard/auto",
        messages=[{"role": "user", "content": prompt}],
        extra_body={"switchyard": {"task": "gsm8k", "quality_target": 0.9, "mode": "route"}},
    )
    assert raw.http_response.status_code == 200
    resp = raw.parse()
    assert resp.choices[0].message.content and resp.usage.completion_tokens > 0
    # routed by the static router inside the image (no torch there), not by a fallback: a static
    # router scores in the ingress itself (`cheap`) or in the router deployment (`router`)
    assert raw.headers["x-switchyard-route-source"] in {"cheap", "router"}
    assert raw.headers["x-switchyard-router-version"].startswith("mlp-")
    request_id = raw.headers["x-switchyard-request-id"]
    events = [json.loads(v) for v in consume_all(kafka_bootstrap, CALLS, prefix, expect=1, timeout_s=60)]
    assert request_id in {e["request_id"] for e in events}

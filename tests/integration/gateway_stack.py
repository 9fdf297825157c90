"""Shared set-up of the gateway integration tests: a catalog pointed at an emulator, test
routers, and consuming a topic (imported by the gateway test modules)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from services.catalog import load_catalog
from services.contracts.topics import topic_name

ROOT = Path(__file__).resolve().parents[2]


def emulator_catalog(tmp: Path, emulator_base: str, first_token_s: float = 3.0) -> Path:
    """The built-in catalog with every provider pointed at the emulator and short timeouts."""
    raw = yaml.safe_load((ROOT / "services" / "catalog.yaml").read_text())
    for p in raw["providers"]:
        p["base_url"] = emulator_base + urlsplit(p["base_url"]).path  # keeps /v1 and /p/<provider>
        p["timeout_first_token_s"] = first_token_s
        p["timeout_total_s"] = first_token_s * 3
        p["max_retries"] = 2
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    load_catalog(path)
    return path


def make_router(kind: str, out: Path, max_rows: int = 60, backend: str | None = None) -> Path:
    """A router artefact for tests: ``SWITCHYARD_TEST_ROUTER_<KIND>`` if set, else trained small
    with the real training command (cached in the state dir between runs); ``backend`` names the
    encoder backend (``static``: the cheap router)."""
    env = os.environ.get(f"SWITCHYARD_TEST_ROUTER_{kind.upper()}{'_' + backend.upper() if backend else ''}")
    if env:
        return Path(env)
    if (out / "manifest.json").exists():
        return out
    cmd = [
        sys.executable,
        "-m",
        "switchyard.cli",
        "train",
        "router",
        "--kind",
        kind,
        "--max-rows",
        str(max_rows),
        "--out",
        str(out),
        *(["--backend", backend] if backend else []),
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)  # noqa: S603
    if res.returncode != 0:
        raise RuntimeError(f"training a test router failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return out


def consume_all(bootstrap: str, spec, prefix: str, expect: int, timeout_s: float = 30.0) -> list[bytes]:
    """Every record value of a prefixed topic, read from the beginning until ``expect`` are seen
    (or the timeout)."""
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic_name(spec, prefix),
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        out: list[bytes] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while loop.time() < deadline and len(out) < expect:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    out.extend(r.value for r in records)
            # a little longer, to catch duplicates
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                out.extend(r.value for r in records)
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def listening_sockets(root_pid: int) -> list[tuple[int, str, str, int]]:
    """TCP sockets in LISTEN state held by ``root_pid`` and its descendants (from /proc):
    (pid, command, address, port). Linux only."""
    import ipaddress

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if pid not in pids:
            pids.add(pid)
            todo.extend(children.get(pid, []))
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        owner[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state != "0A" or inode not in owner:  # 0A: LISTEN
                continue
            hexip, hexport = local.split(":")
            raw = bytes.fromhex(hexip)
            # /proc/net/tcp* print each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = str(ipaddress.ip_address(raw))
            pid = owner[inode]
            # the whole command line, whitespace collapsed: Ray pads its process titles, so a
            # truncated one can miss the name (e.g. "ray::ServeReplica:...")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out.append((pid, " ".join(cmd.split()), ip, int(hexport, 16)))
    return out

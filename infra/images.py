"""Build the container images with buildah (``make images``): gateway, gateway-gpu, streams,
training and mlflow, from the standard Containerfiles in ``infra/images/``.

No container registry is reachable here, so the base image cannot be pulled: it is made from
Debian packages instead. ``debootstrap --variant=minbase bookworm`` with ``python3`` (bookworm's is
3.11, as in ``python:3.11-slim``) and ``python3-venv`` into a root filesystem under the state dir,
imported with ``buildah from scratch`` and committed as ``localhost/switchyard-base:bookworm``
(kept: made once per machine). Every Containerfile takes the base as ``BASE_IMAGE``; elsewhere
``docker build`` uses its default, ``python:3.11-slim``.

buildah runs as root with ``--storage-driver vfs --isolation chroot`` (no overlay mounts, no
namespaces needed; a chroot shares the host network, which reaches PyPI and Debian's mirror).
Python packages come through the Containerfiles' uv/pip cache mounts, so a rebuild downloads
nothing. Usage::

    python -m infra.images build [NAME ...] [--version V]   # default: every image
    python -m infra.images sizes                             # what is built, and how big
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = ROOT / "infra" / "images"
IMAGES = ("gateway", "gateway-gpu", "streams", "training", "mlflow")
BASE_IMAGE = "localhost/switchyard-base:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# what python:3.11-slim has and the Containerfiles use: python3 (3.11) with venv, CA certificates,
# useradd (passwd); apt comes with minbase
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
# dropped from the root filesystem before it is imported (not needed to run anything)
BASE_PRUNE = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "var/log",
)
STORAGE = ("--storage-driver", "vfs")
# The host's CA bundle, mounted over the build's for its RUN steps only (never stored in an image):
# it holds the CA of a TLS-inspecting egress proxy when there is one (as here).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageBuildError(RuntimeError):
    """A build step failed (its command and the end of its output are in the message)."""


@dataclass(frozen=True)
class BuiltImage:
    """One image in buildah's store."""

    name: str
    tag: str
    size_bytes: int
    seconds: float | None = None

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def project_version() -> str:
    """The package version (``pyproject.toml``): every image's tag."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def image_tag(name: str, version: str) -> str:
    """``switchyard/<name>:<version>`` (buildah stores it as ``localhost/switchyard/<name>``)."""
    if name not in IMAGES:
        raise ValueError(f"unknown image {name!r} (known: {', '.join(IMAGES)})")
    return f"switchyard/{name}:{version}"


def containerfile(name: str) -> Path:
    return IMAGES_DIR / f"{name}.Containerfile"


def missing_tools(need_base: bool) -> list[str]:
    """The commands a build needs that are not on PATH (debootstrap only to make the base)."""
    tools = ["buildah"] + (["debootstrap"] if need_base else [])
    return [t for t in tools if shutil.which(t) is None]


def _run(cmd: Sequence[str], *, quiet: bool = False, timeout: float | None = None) -> str:
    """Run a command; its output streams to ours unless ``quiet`` (then it is returned)."""
    log.info("$ %s", " ".join(cmd))
    if quiet:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)  # noqa: S603
        if res.returncode != 0:
            tail = (res.stdout + res.stderr)[-3000:]
            raise ImageBuildError(f"{' '.join(cmd[:4])} ... failed ({res.returncode}):\n{tail}")
        return res.stdout
    res = subprocess.run(list(cmd), timeout=timeout)  # noqa: S603
    if res.returncode != 0:
        raise ImageBuildError(f"{' '.join(cmd[:6])} ... failed ({res.returncode})")
    return ""


def buildah(*args: str, quiet: bool = True, timeout: float | None = None) -> str:
    """``buildah --storage-driver vfs ARGS``."""
    return _run(["buildah", *STORAGE, *args], quiet=quiet, timeout=timeout)


def image_id(ref: str) -> str | None:
    """The id of the image ``ref`` names, None when there is none."""
    res = subprocess.run(  # noqa: S603
        ["buildah", *STORAGE, "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        capture_output=True,
        text=True,
    )
    return res.stdout.strip() or None if res.returncode == 0 else None


def image_exists(ref: str) -> bool:
    return image_id(ref) is not None


def parse_size(text: str) -> int:
    """Bytes of a size as buildah prints it (``820 MB``, ``1.2 GB``, ``512 kB``: SI units)."""
    units = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
    number, _, unit = text.strip().partition(" ")
    if unit.upper() not in units:
        raise ValueError(f"unknown size {text!r}")
    return int(float(number) * units[unit.upper()])


def image_size(ref: str) -> int:
    """The image's size in bytes (its layers, uncompressed), as ``buildah images`` reports it."""
    rows = json.loads(buildah("images", "--json", ref) or "[]")
    if not rows:
        raise ImageBuildError(f"no image {ref}")
    return parse_size(str(rows[0]["size"]))


def make_rootfs(rootfs: Path, mirror: str = DEFAULT_MIRROR) -> None:
    """``debootstrap --variant=minbase`` bookworm with Python into ``rootfs``, then pruned, with
    the apt sources python:3.11-slim has (main, updates, security)."""
    if rootfs.exists():
        shutil.rmtree(rootfs)  # a partial one from an interrupted run
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(rootfs),
            mirror,
        ],
        quiet=True,
        timeout=1800,
    )
    sources = rootfs / "etc" / "apt" / "sources.list.d" / "debian.sources"
    sources.write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n\n"
        f"Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: {SUITE}-security\n"
        "Components: main\n",
        encoding="utf-8",
    )
    (rootfs / "etc" / "apt" / "sources.list").unlink(missing_ok=True)
    for rel in BASE_PRUNE:
        target = rootfs / rel
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def make_base(state_dir: Path, *, mirror: str = DEFAULT_MIRROR, force: bool = False) -> bool:
    """Make ``localhost/switchyard-base:bookworm`` unless it exists; True when it was made."""
    if not force and image_exists(BASE_IMAGE):
        log.info("base image %s present: reused", BASE_IMAGE)
        return False
    work = state_dir / "images"
    rootfs = work / f"rootfs-{SUITE}"
    t0 = time.perf_counter()
    make_rootfs(rootfs, mirror)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tar = Path(tmp) / "rootfs.tar"
        _run(
            [
                "tar",
                "-C",
                str(rootfs),
                "--numeric-owner",
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "-cf",
                str(tar),
                ".",
            ],
            quiet=True,
        )
        ctr = buildah("from", "--name", f"switchyard-base-{os.getpid()}", "scratch").strip()
        try:
            buildah("add", ctr, str(tar), "/")  # a local tar archive is extracted
            buildah(
                "config",
                "--env",
                "LANG=C.UTF-8",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd",
                "python3",
                "--label",
                f"org.opencontainers.image.description=Debian {SUITE} minbase + python3 (debootstrap)",
                ctr,
            )
            buildah("commit", "--rm", ctr, BASE_IMAGE, timeout=1800)
        except BaseException:
            subprocess.run(["buildah", *STORAGE, "rm", ctr], capture_output=True)  # noqa: S603
            raise
    shutil.rmtree(rootfs)  # the image holds it now
    log.info("made base image %s in %.0fs", BASE_IMAGE, time.perf_counter() - t0)
    return True


def build_image(name: str, version: str, *, base: str = BASE_IMAGE, quiet: bool = False) -> BuiltImage:
    """``buildah bud`` one image from its Containerfile, the repository root as the context."""
    tag = image_tag(name, version)
    previous = image_id(tag)
    t0 = time.perf_counter()
    ca = [f"--volume={HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] if HOST_CA_BUNDLE.is_file() else []
    _run(
        [
            "buildah",
            *STORAGE,
            "bud",
            "--isolation",
            "chroot",
            *ca,
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--label",
            f"org.opencontainers.image.version={version}",
            "-f",
            str(containerfile(name)),
            "-t",
            tag,
            str(ROOT),
        ],
        quiet=quiet,
        timeout=3600,
    )
    seconds = time.perf_counter() - t0
    if previous and previous != image_id(tag):
        # the image this tag named before is untagged now: drop it (a vfs image is a full copy)
        subprocess.run(["buildah", *STORAGE, "rmi", previous], capture_output=True)  # noqa: S603
    return BuiltImage(name, tag, image_size(tag), seconds)


def build(
    names: Sequence[str],
    *,
    version: str,
    state_dir: Path,
    mirror: str = DEFAULT_MIRROR,
    quiet: bool = False,
) -> list[BuiltImage]:
    """The base image (when missing), then each image in ``names``; the built images."""
    need_base = not image_exists(BASE_IMAGE) if shutil.which("buildah") else True
    missing = missing_tools(need_base)
    if os.geteuid() != 0:
        raise ImageBuildError("buildah runs here as root (vfs storage, chroot isolation): run as root")
    if missing:
        raise ImageBuildError(
            f"{', '.join(missing)} not found: install with `apt-get install -y buildah debootstrap`"
        )
    make_base(state_dir, mirror=mirror)
    built = []
    for name in names:
        log.info("building %s", image_tag(name, version))
        img = build_image(name, version, quiet=quiet)
        log.info("built %s: %.0f MB in %.0fs", img.tag, img.size_mb, img.seconds or 0.0)
        built.append(img)
    return built


def sizes(version: str) -> list[BuiltImage]:
    """Every built image of this version (and the base), with its size."""
    refs = [BASE_IMAGE] + [image_tag(n, version) for n in IMAGES]
    return [BuiltImage(r.split(":")[0], r, image_size(r)) for r in refs if image_exists(r)]


def report(images: Sequence[BuiltImage]) -> str:
    """A table of the images, as docs/k8s.md quotes it."""
    lines = [f"{'image':<34} {'size':>9}  {'build':>7}"]
    for img in images:
        took = f"{img.seconds:.0f}s" if img.seconds is not None else "-"
        lines.append(f"{img.tag:<34} {img.size_mb:>6.0f} MB  {took:>7}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="make the base image if missing, then build the images")
    b.add_argument(
        "names", nargs="*", metavar="NAME", help=f"images to build (default: all of {', '.join(IMAGES)})"
    )
    b.add_argument("--version", default=None, help="tag (default: the pyproject version)")
    b.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror for the base image")
    b.add_argument("--quiet", action="store_true", help="only the summary, not buildah's output")
    s = sub.add_parser("sizes", help="the built images and their sizes")
    s.add_argument("--version", default=None)
    default_state = Path(os.environ.get("SWITCHYARD_STATE_DIR", ROOT / ".state"))
    for p in (b, s):
        p.add_argument("--state-dir", type=Path, default=default_state, help="base image work dir under it")
    args = parser.parse_args(argv)
    unknown = [n for n in getattr(args, "names", []) if n not in IMAGES]
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)} (known: {', '.join(IMAGES)})")
    logging.basicConfig(
        level=logging.INFO if args.cmd == "build" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    version = args.version or project_version()
    state_dir = args.state_dir.resolve()
    try:
        if args.cmd == "build":
            t0 = time.perf_counter()
            built = build(
                args.names or list(IMAGES),
                version=version,
                state_dir=state_dir,
                mirror=args.mirror,
                quiet=args.quiet,
            )
            print(report(built))
            print(
                f"built {len(built)} image(s) in {time.perf_counter() - t0:.0f}s "
                f"(buildah {' '.join(STORAGE)}; sizes as `buildah images` reports them)"
            )
        else:
            print(report(sizes(version)))
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

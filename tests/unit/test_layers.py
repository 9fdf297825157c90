"""The dependency rule of the layout (docs/development.md, "Layout"): imports flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package -> top-level packages of ours it must never import
FORBIDDEN = {
    "services": {"streams", "training", "infra", "switchyard"},
    "streams": {"training", "infra", "switchyard"},
    "training": {"streams", "infra", "switchyard"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    bad = [
        f"{f.relative_to(ROOT)} imports {sorted(_imports(f) & FORBIDDEN[package])}"
        for f in sorted((ROOT / package).rglob("*.py"))
        if _imports(f) & FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_no_module_passes_settings_through_the_environment() -> None:
    """Settings are built in entrypoints and passed down: no module writes a SWITCHYARD_* variable
    for another to read."""
    offenders = []
    for package in ("services", "streams", "training"):
        for f in (ROOT / package).rglob("*.py"):
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if "environ[" in line and "SWITCHYARD_" in line and "=" in line.split("environ[", 1)[1]:
                    offenders.append(f"{f.relative_to(ROOT)}:{i}")
                if "environ.setdefault(" in line and "SWITCHYARD_" in line:
                    offenders.append(f"{f.relative_to(ROOT)}:{i}")
    assert not offenders, offenders

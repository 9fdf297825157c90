"""The docs stand alone and stay true to the code: every relative link resolves inside the
repository, and the settings reference lists every setting the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra import settings_doc

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not links
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{page.name} links outside the repository: {target}"
        assert path.exists(), f"{page.name} links to a missing file: {target}"


def test_readme_stays_a_guide() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; measurements and history go to docs/"


def test_the_settings_reference_is_up_to_date() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert settings_doc.updated(page) == page, "run `python -m infra.settings_doc`"


def test_the_settings_reference_lists_every_settings_class() -> None:
    from pydantic_settings import BaseSettings

    listed = {path for _, path in settings_doc.CLASSES}
    found = set()
    for pkg in ("services", "streams", "training", "infra"):
        for f in (ROOT / pkg).rglob("*.py"):
            for name in re.findall(
                r"^class (\w+)\(BaseSettings\)", f.read_text(encoding="utf-8"), flags=re.M
            ):
                module = ".".join(f.relative_to(ROOT).with_suffix("").parts)
                found.add(f"{module}:{name}")
    assert found == listed
    for path in listed:
        assert issubclass(settings_doc._load(path), BaseSettings)


def test_every_setting_has_a_description() -> None:
    from pydantic import BaseModel

    def missing(model: type[BaseModel], where: str) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                out.append(f"{where}.{name}")
            nested = settings_doc._nested_model(field)
            if nested is not None:
                out += missing(nested, f"{where}.{name}")
        return out

    undescribed = [m for _, path in settings_doc.CLASSES for m in missing(settings_doc._load(path), path)]
    assert not undescribed, f"fields without a description= (the page's meaning column): {undescribed}"

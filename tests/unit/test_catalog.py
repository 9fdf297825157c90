"""The catalog file: the built-in one validates; broken ones fail with the file and field named."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from services.catalog import CatalogError, load_catalog


def test_builtin_catalog_has_every_benchmark_model() -> None:
    cat = load_catalog()
    assert cat.strong_model == "gpt-4-1106-preview"
    assert "mistralai/Mixtral-8x7B-Instruct-v0.1" in cat.model_ids
    assert len(cat.model_ids) == 12
    # RouteLLM's prices: GPT-4 is ~100x Mixtral.
    ratio = cat.blended_price("gpt-4-1106-preview") / cat.blended_price(
        "mistralai/Mixtral-8x7B-Instruct-v0.1"
    )
    assert 95 < ratio < 110


def test_price_cost() -> None:
    cat = load_catalog()
    p = cat.model("gpt-3.5-turbo-1106").price
    assert p.cost(1_000_000, 0) == pytest.approx(1.0)
    assert p.cost(500_000, 500_000) == pytest.approx(0.5 + 1.0)


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def _base() -> dict:
    return yaml.safe_load((Path(__file__).resolve().parents[2] / "services" / "catalog.yaml").read_text())


def test_unknown_provider_is_named(tmp_path: Path) -> None:
    doc = _base()
    doc["models"][0]["provider"] = "nowhere"
    with pytest.raises(CatalogError, match=r"unknown provider 'nowhere'"):
        load_catalog(_write(tmp_path, doc))


def test_negative_price_and_unknown_field(tmp_path: Path) -> None:
    doc = _base()
    doc["models"][1]["price"]["input"] = -1
    doc["models"][2]["colour"] = "red"
    with pytest.raises(CatalogError) as info:
        load_catalog(_write(tmp_path, doc))
    msg = str(info.value)
    assert "models.1.price.input" in msg and "models.2.colour" in msg and str(tmp_path) in msg


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(_write(tmp_path, "models: [unclosed"))
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="mapping"):
        load_catalog(_write(tmp_path, "- a\n- b\n"))


def test_fallback_and_default_must_exist(tmp_path: Path) -> None:
    doc = _base()
    doc["models"][1]["fallbacks"] = ["ghost"]
    with pytest.raises(CatalogError, match="unknown fallback models"):
        load_catalog(_write(tmp_path, doc))
    doc = _base()
    doc["default_model"] = "ghost"
    with pytest.raises(CatalogError, match="default_model"):
        load_catalog(_write(tmp_path, doc))


def test_models_without_a_fallback_on_another_provider_are_flagged(tmp_path) -> None:
    from typer.testing import CliRunner

    from services.gateway.cli import config_app

    assert load_catalog().resilience_warnings() == []  # the built-in catalog: every chain leaves its provider
    raw = yaml.safe_load(resources.files("services").joinpath("catalog.yaml").read_text())
    strong = next(m for m in raw["models"] if m["id"] == raw["strong_model"])
    strong.pop("fallbacks")
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    warnings = load_catalog(path).resilience_warnings()
    assert any(raw["strong_model"] in w and "no fallback" in w for w in warnings)
    # models whose chain only reaches the strong model stay on one provider now
    assert any("mistralai/Mixtral-8x7B-Instruct-v0.1" in w and "own provider" in w for w in warnings)
    runner = CliRunner()
    assert runner.invoke(config_app, ["validate", str(path)]).exit_code == 0  # warns
    strict = runner.invoke(config_app, ["validate", str(path), "--strict"])
    assert strict.exit_code == 1 and "no fallback" in strict.output

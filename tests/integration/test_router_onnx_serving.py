"""The production recipe (`make router`: ONNX Runtime int8 encoder) end to end on the real MLflow:
train with `--backend onnx --int8`, register + promote, and the gateway's RouterRuntime loads the
champion with the backend its manifest records, and routes with it; a serving-side override
(SWITCHYARD_ROUTER_BACKEND) switches the encoder without retraining."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_onnx_int8_router_trains_registers_and_serves(
    tmp_path: Path, mlflow_uri: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from services.catalog import load_catalog
    from services.gateway.routing import RouteRequest, RouterRuntime
    from training.cli import train_app

    name = f"switchyard-router-onnx-test-{uuid.uuid4().hex[:8]}"
    for k, v in {
        "SWITCHYARD_MLFLOW_TRACKING_URI": mlflow_uri,
        "SWITCHYARD_MLFLOW_REGISTERED_MODEL": name,
        "SWITCHYARD_MLFLOW_EXPERIMENT": "switchyard-router-tests",
        "SWITCHYARD_DATA_DIR": str(data_dir),
    }.items():
        monkeypatch.setenv(k, v)
    for k in ("SWITCHYARD_ROUTER_BACKEND", "SWITCHYARD_ROUTER_QUANTIZE_INT8", "SWITCHYARD_ROUTER_DEVICE"):
        monkeypatch.delenv(k, raising=False)
    res = CliRunner().invoke(
        train_app,
        [
            "router",
            "--kind",
            "mlp",
            "--backend",
            "onnx",
            "--int8",
            "--max-rows",
            "120",
            "--epochs",
            "5",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r"),
            "--register",
            "--promote",
        ],
    )
    assert res.exit_code == 0, res.output[-3000:]
    assert res.stdout.strip().splitlines()[-1] == f"models:/{name}@champion"

    catalog = load_catalog(None)
    runtime = RouterRuntime(catalog)
    assert runtime.swap(f"models:/{name}@champion"), runtime.status.last_error
    router = runtime.router
    cfg = router.encoder_config
    assert (cfg.backend, cfg.quantize_int8) == ("onnx", True)  # as recorded in the manifest
    assert router.manifest.encoder["backend"] == "onnx"
    enc = router.encoder
    assert enc.session is not None and enc.model is None and "int8" in enc.onnx_path.name
    out = runtime.route(
        [
            RouteRequest("What is 17 * 23? Explain step by step.", "gsm8k", 0.95),
            RouteRequest("Write a haiku about routers.", None, 0.5),
        ]
    )
    assert len(out) == 2
    for r in out:
        assert not isinstance(r, Exception), r
        assert r.model in catalog.model_ids and 0.0 <= max(r.scores.values()) <= 1.0

    # serving-side override, e.g. back to torch fp32 without retraining: the router replicas get
    # SWITCHYARD_ROUTER_* as RouterSettings from the app builder, as the loader's options
    import functools

    from pydantic import ValidationError

    from services.gateway.routing import default_loader
    from services.router.settings import RouterSettings

    monkeypatch.setenv("SWITCHYARD_ROUTER_BACKEND", "torch")
    monkeypatch.setenv("SWITCHYARD_ROUTER_QUANTIZE_INT8", "false")
    options = RouterSettings().encoder_options(0, tmp_path)
    rt2 = RouterRuntime(catalog, functools.partial(default_loader, **options))
    assert rt2.swap(f"models:/{name}@champion"), rt2.status.last_error
    assert (rt2.router.encoder_config.backend, rt2.router.encoder_config.quantize_int8) == ("torch", False)
    assert rt2.router.encoder.session is None
    # an invalid override is refused loudly where the settings are built (the app never starts)
    monkeypatch.setenv("SWITCHYARD_ROUTER_BACKEND", "tvm")
    with pytest.raises(ValidationError):
        RouterSettings()

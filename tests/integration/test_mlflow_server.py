"""The running MLflow server: runs with params/metrics/artifacts, registry versions and aliases."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_log_run_register_version_and_alias(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri)
    name = f"switchyard-test-{uuid.uuid4().hex[:8]}"
    mlflow.set_experiment(name)

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "manifest.json").write_text(json.dumps({"kind": "test", "models": ["a", "b"]}))
    with mlflow.start_run() as run:
        mlflow.log_params({"router": "test", "epochs": 3})
        mlflow.log_metric("apgr", 0.71)
        mlflow.log_artifacts(str(model_dir), artifact_path="model")

    client.create_registered_model(name)
    v1 = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", v1.version)
    got = client.get_model_version_by_alias(name, "champion")
    assert got.version == v1.version
    assert got.run_id == run.info.run_id
    assert client.get_run(run.info.run_id).data.metrics["apgr"] == pytest.approx(0.71)

    local = mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "dl"))
    assert json.loads((Path(local) / "manifest.json").read_text())["models"] == ["a", "b"]

    # Moving the alias is how promotion and rollback work.
    v2 = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", v2.version)
    assert client.get_model_version_by_alias(name, "champion").version == v2.version
    client.set_registered_model_alias(name, "champion", v1.version)
    assert client.get_model_version_by_alias(name, "champion").version == v1.version

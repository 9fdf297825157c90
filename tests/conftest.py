"""Shared fixtures. Integration tests reach the real local stack (``make up``).

Locally a missing broker or MLflow skips those tests; with ``CI=true`` it fails them, because CI
starts the stack and a skip there would hide a broken submission.
"""

from __future__ import annotations

import os
import socket
import urllib.request
import uuid
from pathlib import Path

import pytest

# the gateway tests start a local Ray on loopback (services/gateway/local.py): Ray reads the switch
# when it is imported, and collecting the tests imports it before any fixture runs
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from services.contracts.settings import DataSettings, KafkaSettings, MLflowSettings

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROOT = Path(__file__).resolve().parents[1]


def _unavailable(what: str, detail: str) -> None:
    msg = f"{what} is not reachable ({detail}); start the stack with `make up`"
    if IN_CI:
        pytest.fail(msg + " — CI requires it", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    settings = DataSettings()
    path = settings.data_dir if settings.data_dir.is_absolute() else ROOT / settings.data_dir
    if not (path / "routellm").exists():
        fallback = ROOT.parent / "shared" / "data"
        if (fallback / "routellm").exists():
            return fallback
        pytest.fail(f"benchmark data not found at {path}; set SWITCHYARD_DATA_DIR", pytrace=False)
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = KafkaSettings().bootstrap
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    except OSError as exc:
        _unavailable(f"Kafka at {bootstrap}", str(exc))
    return bootstrap


@pytest.fixture(scope="session")
def mlflow_uri() -> str:
    uri = MLflowSettings().tracking_uri
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=3) as resp:
            if resp.status != 200:
                _unavailable(f"MLflow at {uri}", f"/health answered {resp.status}")
    except OSError as exc:
        _unavailable(f"MLflow at {uri}", str(exc))
    return uri


@pytest.fixture
def unique_prefix() -> str:
    """A topic/group prefix unique to one test, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that restart the stack run last, so a restart never races other integration tests."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_stack") is not None)

"""Train a small router, register it in the running MLflow, load it by alias, score via the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from services.router.artifact import load_router

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CLI = [str(Path(sys.executable).parent / "switchyard"), "router"]


def _run(args: list[str], env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_train_register_alias_score(
    tmp_path: Path, mlflow_uri: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from training.cli import router_app

    name = f"switchyard-router-test-{uuid.uuid4().hex[:8]}"
    env = {
        "SWITCHYARD_MLFLOW_TRACKING_URI": mlflow_uri,
        "SWITCHYARD_MLFLOW_REGISTERED_MODEL": name,
        "SWITCHYARD_MLFLOW_EXPERIMENT": "switchyard-router-tests",
        "SWITCHYARD_DATA_DIR": str(data_dir),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    env = {**os.environ, **env}
    # train + register in-process (the same Typer command `switchyard router train` runs)
    runner = CliRunner()
    train = runner.invoke(
        router_app,
        [
            "train",
            "--kind",
            "mlp",
            "--max-rows",
            "120",
            "--epochs",
            "5",
            "--out",
            str(tmp_path / "r"),
            "--register",
        ],
    )
    assert train.exit_code == 0, train.output[-3000:]
    ref = train.stdout.strip().splitlines()[-1]
    assert ref == f"models:/{name}@challenger"

    prompts = [
        {"id": "a", "prompt": "What is 17 * 23? Explain step by step.", "task": "gsm8k"},
        {
            "id": "b",
            "prompt": "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:",
            "task": "astronomy",
        },
        {"id": "c", "prompt": "Write a haiku about routers.", "task": None},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = tmp_path / "out.jsonl"
    score = _run(["score", "--model", ref, "--input", str(inp), "--output", str(out)], env)
    assert score.returncode == 0, score.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "b", "c"]
    local = load_router(str(tmp_path / "r"))
    for x in lines:
        assert set(x) == {"id", "scores", "router_version"}
        assert x["router_version"] == local.version
        assert set(x["scores"]) == set(local.models)
        assert "gpt-4-1106-preview" in x["scores"] and all(0.0 <= p <= 1.0 for p in x["scores"].values())

    # promote: champion resolves to the same version, offline from the local server
    prom = runner.invoke(router_app, ["promote"])
    assert prom.exit_code == 0, prom.output[-2000:]
    champion = load_router(f"models:/{name}@champion", tracking_uri=mlflow_uri)
    assert champion.version == local.version

    # bad input: a missing prompt -> clear error, non-zero exit, nothing written, no traceback
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "ok"}\n{"id": "y"}\n')
    res = _run(["score", "--model", ref, "--input", str(bad), "--output", str(tmp_path / "o2.jsonl")], env)
    assert res.returncode != 0 and "bad.jsonl:2" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o2.jsonl").exists()
    # unknown model ref
    res = _run(["score", "--model", f"models:/{name}@nope", "--input", str(inp), "--output", str(out)], env)
    assert res.returncode != 0 and "cannot load router" in res.stderr and "Traceback" not in res.stderr

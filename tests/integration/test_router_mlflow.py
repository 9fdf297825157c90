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

    from training.cli import router_app, train_app

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
    # train + register in-process (the same Typer command `switchyard train router` runs)
    runner = CliRunner()
    train = runner.invoke(
        train_app,
        [
            "router",
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

    # promote: champion resolves to the same version, offline from the local server; the first
    # router of a registered model has no champion to be gated against: a bootstrap pass
    prom = runner.invoke(router_app, ["promote"])
    assert prom.exit_code == 0, prom.output[-2000:]
    champion = load_router(f"models:/{name}@champion", tracking_uri=mlflow_uri)
    assert champion.version == local.version
    _check_promotion_gating(tmp_path, name, mlflow_uri)

    # the outside-evaluation contract for two candidates: escalate + the gateway's decision
    _check_escalate_and_route(tmp_path, f"models:/{name}@champion", env, local, data_dir)

    # bad input: a missing prompt -> clear error, non-zero exit, nothing written, no traceback
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "ok"}\n{"id": "y"}\n')
    res = _run(["score", "--model", ref, "--input", str(bad), "--output", str(tmp_path / "o2.jsonl")], env)
    assert res.returncode != 0 and "bad.jsonl:2" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o2.jsonl").exists()
    # unknown model ref
    res = _run(["score", "--model", f"models:/{name}@nope", "--input", str(inp), "--output", str(out)], env)
    assert res.returncode != 0 and "cannot load router" in res.stderr and "Traceback" not in res.stderr


def _check_promotion_gating(tmp_path: Path, name: str, mlflow_uri: str) -> None:
    """Issue 15, item 5: `router promote` refuses an ungated or unverifiable version without
    --force, against the real MLflow server."""
    import shutil

    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from services.contracts.settings import MLflowSettings
    from services.router.artifact import load_local
    from training.cli import router_app
    from training.promote import check_ref
    from training.registry import log_run

    client, ms, runner = MlflowClient(tracking_uri=mlflow_uri), MLflowSettings(), CliRunner()
    first = client.get_model_version_by_alias(name, "champion")
    assert (first.tags["gate"], first.tags["gate_kind"]) == ("passed", "bootstrap")
    manifest = load_local(tmp_path / "r").manifest
    # registered outside the loop while a champion exists: gate none -> refused
    ungated = log_run(ms, tmp_path / "r", manifest, {"train": {}}, {}, register=True, run_name="ungated")
    tags = client.get_model_version(name, ungated.version).tags
    assert tags["gate"] == "none" and f"champion version {first.version}" in tags["gate_reasons"]
    res = runner.invoke(router_app, ["promote", "--version", ungated.version])
    assert res.exit_code == 1 and "no passed gate (gate none" in res.output, res.output[-2000:]
    assert client.get_model_version_by_alias(name, "champion").version == first.version
    # the same check on a reference: the gated champion passes (downloaded, verified, smoke-checked)
    assert check_ref(ms, f"models:/{name}@champion").problems == []
    (problem,) = check_ref(ms, f"models:/{name}/{ungated.version}").problems
    assert "no passed gate" in problem
    # gated but corrupt: fails verification -> refused
    bad = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "r", bad)
    head = bad / "head.safetensors"
    raw = bytearray(head.read_bytes())
    raw[-64:] = b"\x00" * 64
    head.write_bytes(bytes(raw))
    corrupt = log_run(
        ms,
        bad,
        manifest,
        {"gate": {"passed": True, "reasons": "test"}},
        {},
        register=True,
        run_name="corrupt",
    )
    res = runner.invoke(router_app, ["promote", "--version", corrupt.version])
    assert res.exit_code == 1 and "fails verification" in res.output, res.output[-2000:]
    assert any("fails verification" in p for p in check_ref(ms, f"models:/{name}/{corrupt.version}").problems)
    # --force promotes anyway and says so on the version
    res = runner.invoke(router_app, ["promote", "--version", ungated.version, "--force"])
    assert res.exit_code == 0, res.output[-2000:]
    assert client.get_model_version_by_alias(name, "champion").version == ungated.version
    assert "no passed gate" in client.get_model_version(name, ungated.version).tags["forced_promotion"]
    # back to the gated first version for the checks that follow
    res = runner.invoke(router_app, ["promote", "--version", first.version])
    assert res.exit_code == 0, res.output[-2000:]


def _check_escalate_and_route(tmp_path: Path, ref: str, env: dict[str, str], local, data_dir: Path) -> None:  # noqa: ANN001
    """``score --candidates S,C`` gives one escalate number per prompt, and ``route`` (the
    gateway's decision without a task tag) sends to the cheap model exactly the prompts with the
    lowest escalate, more of them at a lower target."""
    import pandas as pd

    strong, cheap = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
    frame = pd.read_csv(data_dir / "routellm" / "mmlu" / "mmlu_astronomy.csv").head(40)
    rows = [{"id": f"q{i}", "prompt": p, "task": "astronomy"} for i, p in enumerate(frame["prompt"])]
    inp = tmp_path / "pair.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "esc.jsonl"
    res = _run(
        [
            "score",
            "--model",
            ref,
            "--input",
            str(inp),
            "--output",
            str(out),
            "--candidates",
            f"{strong},{cheap}",
        ],
        env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    esc = {x["id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert set(esc) == {r["id"] for r in rows}
    for x in esc.values():
        assert set(x) == {"id", "scores", "router_version", "escalate"} and isinstance(x["escalate"], float)
        assert x["router_version"] == local.version
    picks = {}
    for q in (0.5, 0.95, 1.0):
        o = tmp_path / f"route-{q}.jsonl"
        res = _run(
            [
                "route",
                "--model",
                ref,
                "--input",
                str(inp),
                "--output",
                str(o),
                "--candidates",
                f"{strong},{cheap}",
                "--quality-target",
                str(q),
            ],
            env,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        lines = [json.loads(line) for line in o.read_text().splitlines()]
        assert [x["id"] for x in lines] == [r["id"] for r in rows]
        assert all(
            set(x) == {"id", "model", "router_version"} and x["model"] in (strong, cheap) for x in lines
        )
        picks[q] = {x["id"]: x["model"] for x in lines}
        to_cheap = [esc[i]["escalate"] for i, m in picks[q].items() if m == cheap]
        to_strong = [esc[i]["escalate"] for i, m in picks[q].items() if m == strong]
        if to_cheap and to_strong:
            assert max(to_cheap) <= min(to_strong) + 1e-9  # one ranking behind every decision
    n_cheap = {q: sum(m == cheap for m in p.values()) for q, p in picks.items()}
    assert n_cheap[0.5] >= n_cheap[0.95] >= n_cheap[1.0] and n_cheap[0.5] > n_cheap[1.0]
    # a candidate the router does not score: a clear error, no traceback
    res = _run(
        [
            "route",
            "--model",
            ref,
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "x.jsonl"),
            "--candidates",
            f"{strong},no-such-model",
        ],
        env,
    )
    assert res.returncode != 0 and "no-such-model" in res.stderr and "Traceback" not in res.stderr

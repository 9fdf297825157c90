"""The closed loop on the real stack: Kafka (unique topics), MLflow (a unique registered model), the
upstream emulator as a subprocess (the strong model and the judge for distillation).

One module-scoped sequence (each step needs the previous one's registry state):
1. a retrain request on the topic → the worker runs → challenger registered with the gate's verdict
   logged (first model: promoted to champion), distillation spent within budget, fine-tuning file;
2. a challenger that fails the gate stays ``challenger``; ``champion`` does not move;
3. a corrupt model version is refused by ``load_router`` and by the gateway's swap logic (the old
   router keeps serving); rollback restores the previous champion.
Trains on a small subset of the data to stay within a few minutes of CPU.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from services.contracts import HardQueryEvent, HardQueryReason, OutcomeEvent, RetrainRequest
from services.contracts.settings import KafkaSettings, MLflowSettings
from services.contracts.topics import HARD_QUERIES, OUTCOMES, topic_name
from training.loop.run import LoopContext, RunExecutor
from training.loop.worker import consume, publish_request
from training.settings import TrainSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
TASK = "high_school_psychology"  # the "drifting" task (many MMLU rows; left out of bootstrap training)
STRONG, CHEAP = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


@pytest.fixture(scope="module")
def emulator(data_dir: Path):
    from infra.emulator.testing import run_emulator

    with run_emulator(data_dir=data_dir, datasets=["mmlu"]) as emu:
        yield emu


@pytest.fixture(scope="module", params=["torch", "static"])
def loop_env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    emulator,
    data_dir: Path,
    kafka_bootstrap: str,  # noqa: ANN001
    mlflow_uri: str,
) -> dict:
    from services.contracts.topic_admin import apply_topics

    prefix = f"t{uuid.uuid4().hex[:10]}."
    asyncio.run(apply_topics(kafka_bootstrap, prefix))
    tmp = tmp_path_factory.mktemp("loop")
    cat = yaml.safe_load((ROOT / "services" / "catalog.yaml").read_text())
    for p in cat["providers"]:
        p["base_url"] = emulator.openai_base_url if p["kind"] == "openai" else emulator.base_url
    cat_path = tmp / "catalog.yaml"
    cat_path.write_text(yaml.safe_dump(cat))
    ms = MLflowSettings(
        tracking_uri=mlflow_uri,
        registered_model=f"switchyard-loop-test-{uuid.uuid4().hex[:8]}",
        experiment="switchyard-loop-tests",
    )
    settings = TrainSettings(
        datasets=["mmlu", "gsm8k"],
        max_rows=150,
        epochs=3,
        calibration_folds=2,
        exclude_tasks=[TASK],
        budget_usd=0.5,
        budget_calls=40,
        max_queries=15,
        clusters=3,
        coalesce_s=2.0,
        first_min_quality=0.5,
        # the MiniLM router, and the cheap static one `make router` ships: every stage of the
        # loop (retrain, gate, register, corrupt refusal, rollback) with each
        encoder_backend=request.param,
    )
    ctx = LoopContext(
        settings=settings,
        mlflow=ms,
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix),
        data_dir=data_dir,
        state_dir=tmp / "state",
        catalog_path=cat_path,
        embeddings_dir=ROOT / ".state" / "cache" / "embeddings",
    )
    return {"ctx": ctx, "prefix": prefix, "bootstrap": kafka_bootstrap, "tmp": tmp}


async def _publish_live(bootstrap: str, prefix: str, data_dir: Path) -> int:
    """Hard queries (negative feedback on the cheap model) and outcomes for TASK, as streams emits."""
    from aiokafka import AIOKafkaProducer

    from training.data import load_mmlu

    f = load_mmlu(data_dir).frame
    rows = f[f["task"] == TASK].head(30)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for r in rows.itertuples():
            rid = uuid.uuid4().hex
            hq = HardQueryEvent(
                request_id=rid,
                task=TASK,
                prompt_hash=r.prompt_hash,
                prompt=r.prompt,
                reason=HardQueryReason.NEGATIVE_FEEDBACK,
                chosen_model=CHEAP,
                feedback_score=0.0,
            )
            oc = OutcomeEvent(
                request_id=rid,
                task=TASK,
                prompt_hash=r.prompt_hash,
                prompt=None,
                chosen_model=CHEAP,
                tier="budget",
                mode="route",
                score=0.0,
                accepted=False,
            )
            await producer.send_and_wait(topic_name(HARD_QUERIES, prefix), hq.to_bytes(), key=TASK.encode())
            await producer.send_and_wait(topic_name(OUTCOMES, prefix), oc.to_bytes(), key=TASK.encode())
        # a record that breaks the contract is counted and skipped, not fatal
        await producer.send_and_wait(topic_name(HARD_QUERIES, prefix), b'{"nope": 1}', key=TASK.encode())
    finally:
        await producer.stop()
    return len(rows)


def _client(ctx: LoopContext):  # noqa: ANN202
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=ctx.mlflow.tracking_uri)


def _alias(ctx: LoopContext, alias: str) -> str | None:
    from training.promote import alias_version

    return alias_version(ctx.mlflow, alias)


@pytest.fixture(scope="module")
def first_run(loop_env: dict, data_dir: Path) -> dict:
    ctx: LoopContext = loop_env["ctx"]
    n = asyncio.run(_publish_live(loop_env["bootstrap"], loop_env["prefix"], data_dir))
    reqs = [
        RetrainRequest(reason=f"quality drift on task {TASK}", source="streams", tasks=[TASK])
        for _ in range(2)
    ]

    async def go() -> list:
        for r in reqs:  # two concurrent requests for the same task: one run
            await publish_request(ctx.kafka, r)
        return await consume(ctx, max_runs=1, idle_exit_s=120)

    runs = asyncio.run(go())
    return {"runs": runs, "requests": reqs, "published": n}


def test_retrain_request_runs_the_loop_and_registers_a_gated_challenger(
    loop_env: dict, first_run: dict
) -> None:
    ctx: LoopContext = loop_env["ctx"]
    runs = first_run["runs"]
    assert len(runs) == 1, "two concurrent requests for the same task must coalesce into one run"
    run = runs[0]
    assert set(run.request_ids) == {r.retrain_id for r in first_run["requests"]}
    assert run.status == "done" and run.model_version is not None
    # collected from Kafka: the outcomes and hard queries, the invalid record counted
    assert run.collect["hard_kept"] == first_run["published"] and run.collect["hard_invalid"] == 1
    assert run.collect["outcomes_kept"] == first_run["published"]
    # distillation went through the provider layer to the emulator, within budget
    d = run.distill
    assert 0 < d["calls"] <= ctx.settings.budget_calls and 0 < d["spent_usd"] <= ctx.settings.budget_usd
    assert d["labels"] > 0 and d["clusters"] >= 1
    if d["finetune_examples"]:
        lines = Path(d["finetune_path"]).read_text().splitlines()
        assert len(lines) == d["finetune_examples"] and '"role": "assistant"' in lines[0]
    # the MLflow run has the verdict, the metrics, the plot; the version carries the verdict
    client = _client(ctx)
    mrun = client.get_run(run.mlflow_run_id)
    assert mrun.data.metrics["gate.passed"] == float(run.verdict["passed"])
    assert "challenger.overall.quality_ratio" in mrun.data.metrics
    assert mrun.data.params["gate.passed"] == str(run.verdict["passed"])
    arts = {a.path for a in client.list_artifacts(run.mlflow_run_id, "report")}
    assert {"report/gate.json", "report/gate.png", "report/distill.json"} <= arts
    mv = client.get_model_version(ctx.mlflow.registered_model, run.model_version)
    assert mv.tags["gate"] == ("passed" if run.verdict["passed"] else "failed")
    assert mv.tags["retrain_run_id"] == run.run_id
    _check_distillation_artefact(ctx, run)
    assert _alias(ctx, "challenger") == run.model_version
    # first model: champion only if the gate passed
    assert (_alias(ctx, "champion") == run.model_version) is bool(run.verdict["passed"])
    # the same requests redelivered: no second run (idempotent)
    from training.loop.coalesce import plan

    again, decisions = plan(ctx.store(), first_run["requests"])
    assert again == [] and set(decisions.values()) == {"duplicate"}


def _check_distillation_artefact(ctx: LoopContext, run) -> None:  # noqa: ANN001
    """The fine-tuning JSONL is an artefact of the MLflow run (distillation/), with its counts as a
    summary, metrics and params, and in ``switchyard train status``."""
    import json

    from typer.testing import CliRunner

    from switchyard.cli import app

    client = _client(ctx)
    arts = {a.path for a in client.list_artifacts(run.mlflow_run_id, "distillation")}
    assert arts == {"distillation/finetune.jsonl", "distillation/summary.json"}
    local = Path(client.download_artifacts(run.mlflow_run_id, "distillation", str(loop_tmp(ctx))))
    lines = [x for x in (local / "finetune.jsonl").read_text().splitlines() if x.strip()]
    summary = json.loads((local / "summary.json").read_text())
    d = run.distill
    assert d["finetune_examples"] > 0, "the emulator's judge accepts GPT-4's answers: examples expected"
    assert len(lines) == summary["examples"] == d["finetune_examples"]
    assert all(json.loads(x)["messages"][-1]["role"] == "assistant" for x in lines)
    assert summary["per_task"] == {TASK: summary["examples"]}  # every hard query was of TASK
    assert summary["tokens_estimate"] > 0 and summary["spent_usd"] == pytest.approx(d["spent_usd"])
    assert summary["target_model"] == CHEAP and summary["teacher_model"] == STRONG
    m = client.get_run(run.mlflow_run_id).data
    assert m.metrics["distillation.examples"] == summary["examples"]
    assert m.metrics[f"distillation.examples.{TASK}"] == summary["examples"]
    assert m.metrics["distillation.tokens_estimate"] == summary["tokens_estimate"]
    assert m.params["distillation.file"] == "distillation/finetune.jsonl"
    assert d["artifact"] == f"runs:/{run.mlflow_run_id}/distillation/finetune.jsonl"
    # switchyard train status shows the counts
    res = CliRunner().invoke(
        app, ["train", "status", "--last", "5"], env={"SWITCHYARD_STATE_DIR": str(ctx.state_dir)}
    )
    assert res.exit_code == 0, res.output
    shown = [json.loads(block) for block in _json_blocks(res.output)]
    mine = next(x for x in shown if x["run_id"] == run.run_id)
    assert mine["distill"]["finetune_examples"] == summary["examples"]
    assert mine["distill"]["finetune_per_task"] == summary["per_task"]
    assert mine["distill"]["finetune_tokens"] == summary["tokens_estimate"]


def loop_tmp(ctx: LoopContext) -> Path:
    out = ctx.state_dir / "downloaded"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _json_blocks(text: str) -> list[str]:
    """The top-level JSON objects ``switchyard train status`` prints one after the other."""
    blocks, cur = [], []
    for line in text.splitlines():
        if line == "{":
            cur = [line]
        elif cur:
            cur.append(line)
            if line == "}":
                blocks.append("\n".join(cur))
                cur = []
    return blocks


def test_failing_gate_leaves_champion(loop_env: dict, first_run: dict) -> None:
    ctx: LoopContext = loop_env["ctx"]
    from training.promote import promote

    first = first_run["runs"][0]
    if _alias(ctx, "champion") is None:  # the first model failed its (absolute) gate: make it champion
        promote(ctx.mlflow, version=first.model_version)
    champion_before = _alias(ctx, "champion")
    # a drifting task without held-out rows can never be shown repaired: the gate must fail
    req = RetrainRequest(reason="impossible repair", source="operator", tasks=["no_such_task"])
    from training.loop.run import run_requests

    (run,), _ = run_requests(ctx, [req], RunExecutor(ctx))
    assert run.verdict is not None and run.verdict["passed"] is False
    assert any("no_such_task" in r for r in run.verdict["reasons"])
    assert not run.promoted
    assert _alias(ctx, "champion") == champion_before
    assert _alias(ctx, "challenger") == run.model_version
    mv = _client(ctx).get_model_version(ctx.mlflow.registered_model, run.model_version)
    assert mv.tags["gate"] == "failed" and "no_such_task" in mv.tags["gate_reasons"]


def test_corrupt_version_refused_and_rollback_restores(
    loop_env: dict, first_run: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.catalog import load_catalog
    from services.gateway.routing import RouterRuntime
    from services.router.artifact import RouterLoadError, load_local, load_router
    from training.promote import promote, rollback_and_wait, version_ref
    from training.registry import log_run

    ctx: LoopContext = loop_env["ctx"]
    good_version = _alias(ctx, "champion")
    assert good_version is not None
    good_dir = Path(first_run["runs"][0].router_dir)
    bad_dir = loop_env["tmp"] / "corrupt-router"
    shutil.copytree(good_dir, bad_dir)
    head = bad_dir / "head.safetensors"
    raw = bytearray(head.read_bytes())
    raw[-64:] = b"\x00" * 64
    head.write_bytes(bytes(raw))
    reg = log_run(
        ctx.mlflow,
        bad_dir,
        load_local(good_dir).manifest,
        {"corrupt": True},
        {},
        register=True,
        alias="challenger",
        run_name="corrupt",
    )
    with pytest.raises(RouterLoadError, match="corrupt or was modified"):
        load_router(version_ref(ctx.mlflow, reg.version), tracking_uri=ctx.mlflow.tracking_uri)
    # the gateway's swap logic (what each router replica runs in reconfigure) keeps the old router
    monkeypatch.setenv("SWITCHYARD_MLFLOW_TRACKING_URI", ctx.mlflow.tracking_uri)
    runtime = RouterRuntime(load_catalog(ctx.catalog_path))
    assert runtime.swap(version_ref(ctx.mlflow, good_version))
    serving = runtime.status.version
    assert not runtime.swap(version_ref(ctx.mlflow, reg.version))
    assert runtime.status.version == serving and runtime.status.failed_swaps == 1
    assert "corrupt" in (runtime.status.last_error or "")
    # promote the corrupt one by mistake, then roll back: champion returns to the good version
    promote(ctx.mlflow, version=reg.version)
    assert _alias(ctx, "champion") == reg.version
    v, res = rollback_and_wait(ctx.mlflow)
    assert v == good_version == _alias(ctx, "champion") and res is None
    assert runtime.swap(version_ref(ctx.mlflow, v)) and runtime.status.version == serving

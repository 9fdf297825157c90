"""Retrain worker: coalescing of concurrent requests, idempotency on retrain_id, resumable runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.contracts import RetrainRequest
from services.contracts.settings import MLflowSettings
from training.loop.coalesce import plan
from training.loop.run import LoopContext, RunExecutor, run_requests
from training.loop.state import RunStatus, RunStore
from training.settings import TrainSettings


def req(tasks: list[str], reason: str = "drift", ts: datetime | None = None) -> RetrainRequest:
    return RetrainRequest(reason=reason, tasks=tasks, source="streams", **({"ts": ts} if ts else {}))


def test_concurrent_requests_coalesce_into_one_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    a, b, c = req(["law"]), req(["law"], "again"), req(["gsm8k"])
    runs, decisions = plan(store, [a, b, c])
    assert len(runs) == 1
    run = runs[0]
    assert sorted(run.tasks) == ["gsm8k", "law"]
    assert set(run.request_ids) == {a.retrain_id, b.retrain_id, c.retrain_id}
    assert set(decisions.values()) == {"new"}
    # a request for the same task while the run is pending joins it
    d = req(["law"])
    runs2, dec2 = plan(store, [d])
    assert [r.run_id for r in runs2] == [run.run_id] and dec2[d.retrain_id] == "joined"
    assert d.retrain_id in store.load(run.run_id).request_ids


def test_redelivered_request_is_a_duplicate(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    a = req(["law"])
    runs, _ = plan(store, [a])
    runs2, dec = plan(RunStore(tmp_path), [a, a])  # e.g. Kafka redelivery after a crash
    assert runs2 == [] and dec == {a.retrain_id: "duplicate"}
    assert len(store.all()) == 1


def test_finished_run_covers_older_requests_only(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    old = req(["law"], ts=datetime.now(UTC) - timedelta(minutes=5))
    (run,), _ = plan(store, [req(["law"])])
    run.status, run.collected_at = RunStatus.DONE, datetime.now(UTC) - timedelta(minutes=1)
    store.save(run)
    runs, dec = plan(store, [old])
    assert runs == [] and dec[old.retrain_id] == "covered"
    newer = req(["law"])
    runs, dec = plan(store, [newer])
    assert dec[newer.retrain_id] == "new" and runs[0].run_id != run.run_id


class FakeExecutor(RunExecutor):
    """Stages that record calls; ``fail_at`` raises once in that stage (a crash)."""

    def __init__(self, ctx: LoopContext, fail_at: str | None = None) -> None:
        super().__init__(ctx)
        self.calls: list[str] = []
        self.fail_at = fail_at

    def _stage(self, name: str, state, status: RunStatus) -> None:  # noqa: ANN001
        self.calls.append(name)
        if self.fail_at == name:
            self.fail_at = None
            raise RuntimeError("crash")
        state.status = status

    def collect(self, state) -> None:  # noqa: ANN001
        state.collected_at = datetime.now(UTC)
        self._stage("collect", state, RunStatus.COLLECTED)

    def distil(self, state) -> None:  # noqa: ANN001
        self._stage("distil", state, RunStatus.DISTILLED)

    def train(self, state) -> None:  # noqa: ANN001
        self._stage("train", state, RunStatus.TRAINED)

    def evaluate_and_register(self, state) -> None:  # noqa: ANN001
        state.verdict = {"passed": True, "reasons": []}
        self._stage("gate", state, RunStatus.GATED)

    def promote(self, state) -> None:  # noqa: ANN001
        self._stage("promote", state, RunStatus.DONE)


@pytest.fixture
def ctx(tmp_path: Path) -> LoopContext:
    return LoopContext(
        settings=TrainSettings(),
        mlflow=MLflowSettings(tracking_uri="http://127.0.0.1:1"),
        kafka=None,
        data_dir=tmp_path,
        state_dir=tmp_path,
    )


def test_run_resumes_after_a_crash_without_redoing_stages(ctx: LoopContext) -> None:
    ex = FakeExecutor(ctx, fail_at="train")
    a = req(["law"])
    with pytest.raises(RuntimeError):
        run_requests(ctx, [a], ex)
    state = ctx.store().all()[0]
    assert state.status == RunStatus.DISTILLED and "crash" in (state.error or "")
    # the same request redelivered: no new run; resuming continues at train
    runs, dec = plan(ctx.store(), [a])
    assert runs == [] and dec[a.retrain_id] == "duplicate"
    ex2 = FakeExecutor(ctx)
    done = ex2.execute(ctx.store().load(state.run_id))
    assert ex2.calls == ["train", "gate", "promote"]
    assert done.status == RunStatus.DONE and done.error is None and done.attempts == 2
    # running a finished run again does nothing
    ex3 = FakeExecutor(ctx)
    ex3.execute(ctx.store().load(state.run_id))
    assert ex3.calls == []


def test_repeated_failures_mark_the_run_failed(ctx: LoopContext) -> None:
    (state,), _ = plan(ctx.store(), [req(["law"])])
    for _ in range(3):
        with pytest.raises(RuntimeError):
            FakeExecutor(ctx, fail_at="collect").execute(state)
    assert ctx.store().load(state.run_id).status == RunStatus.FAILED


def test_warm_start_reindexes_task_weights(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from training.loop.run import warm_start_params

    rng = np.random.default_rng(0)
    d, h, m = 384, 8, 2
    old_vocab = ["a", "b"]
    w1 = rng.normal(size=(d + len(old_vocab), h)).astype(np.float32)
    params = {
        "w1": w1,
        "b1": np.ones(h, np.float32),
        "w2": np.ones((h, m), np.float32),
        "b2": np.zeros(m, np.float32),
    }
    save_file(params, str(tmp_path / "head.safetensors"))

    class Champion:
        path = tmp_path
        models = ["s", "w"]

        class manifest:  # noqa: N801
            kind = "mlp"
            task_vocab = old_vocab

    init = warm_start_params(Champion, ["b", "new"], ["s", "w"])
    assert init is not None and init["w1"].shape == (d + 2, h)
    np.testing.assert_array_equal(init["w1"][:d], w1[:d])
    np.testing.assert_array_equal(init["w1"][d], w1[d + 1])  # task "b" keeps its row
    assert not init["w1"][d + 1].any()  # a new task starts from zero
    assert warm_start_params(Champion, ["a"], ["s", "other"]) is None  # different models: cold start


@pytest.mark.slow  # trains two routers
def test_warm_start_does_not_leak_into_calibration(tmp_path: Path) -> None:
    """The champion saw the training rows: calibration must come from fold models that did not,
    so a warm start changes the served head but not the out-of-fold calibration."""
    import numpy as np
    import pandas as pd

    from services.catalog import load_catalog
    from services.router.encoder import EncoderConfig
    from training.data import GPT4, MIXTRAL
    from training.train import TrainConfig, TrainingSet, train_router

    rng = np.random.default_rng(0)
    n, d = 400, 384
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    easy = emb[:, 0] > 0
    labels = np.stack([(rng.random(n) < 0.9), (rng.random(n) < np.where(easy, 0.85, 0.3))], 1).astype(float)
    frame = pd.DataFrame(
        {
            "prompt_hash": [f"h{i}" for i in range(n)],
            "task": "t",
            "prompt": "p",
            "dataset": "mmlu",
            "id": range(n),
        }
    )
    ts = TrainingSet(frame, emb, ["t"] * n, labels, [GPT4, MIXTRAL])
    cfg = TrainConfig(epochs=3, calibration_folds=3)
    cat = load_catalog(None)
    enc = EncoderConfig()
    cold, _ = train_router(ts, cfg, cat, tmp_path / "cold", encoder=enc, encoder_sha=None)
    # a "champion" that memorised these very rows: large weights, pointing at the labels
    h = cfg.hidden
    init = {
        "w1": rng.normal(scale=3.0, size=(d + 1, h)).astype(np.float32),
        "b1": np.zeros(h, np.float32),
        "w2": rng.normal(scale=3.0, size=(h, 2)).astype(np.float32),
        "b2": np.zeros(2, np.float32),
    }
    warm, _ = train_router(ts, cfg, cat, tmp_path / "warm", encoder=enc, encoder_sha=None, init=init)
    cal_cold = (tmp_path / "cold" / "calibration.json").read_text()
    cal_warm = (tmp_path / "warm" / "calibration.json").read_text()
    assert cal_cold == cal_warm
    head_cold = (tmp_path / "cold" / "head.safetensors").read_bytes()
    head_warm = (tmp_path / "warm" / "head.safetensors").read_bytes()
    assert head_cold != head_warm  # the warm start did reach the served head
    # the saved router records the band of scores it serves on its own rows, and serves within it
    from services.router.artifact import load_local

    router = load_local(tmp_path / "cold")
    ranges = router.manifest.training["score_ranges"]
    assert set(ranges) == {GPT4, MIXTRAL}
    served = router.scores_from_embeddings(emb[:50], [None] * 50)
    for j, m in enumerate(router.models):
        lo, hi = ranges[m]
        assert 0 <= lo < hi <= 1 and lo - 1e-6 <= served[:, j].min() and served[:, j].max() <= hi + 1e-6


def test_a_run_for_one_task_keeps_the_live_labels_of_tasks_without_bootstrap_labels(
    tmp_path: Path, data_dir: Path
) -> None:
    """Story (b) after story (a) in the demo: the run for the opportunity task must not forget the
    repair of the drifted task, whose only labels are live ones (it has no bootstrap labels); a
    stable task's live labels stay out (they are a selection-biased sample)."""
    from services.contracts import OutcomeEvent
    from training.collect import FRESH
    from training.loop.run import label_tasks
    from training.loop.state import RunState

    strong = "gpt-4-1106-preview"

    assert label_tasks(["world_religions"], ["professional_law", "world_religions"]) == [
        "professional_law",
        "world_religions",
    ]
    settings = TrainSettings(
        datasets=["mmlu"], max_rows=60, holdout_rows=0, exclude_tasks=["professional_law", "world_religions"]
    )
    lctx = LoopContext(settings, MLflowSettings(tracking_uri="http://127.0.0.1:1"), None, data_dir, tmp_path)
    ex = RunExecutor(lctx)
    state = RunState(run_id="run-b", tasks=["world_religions"])
    frame = ex._frame(state)
    law = frame[frame["task"] == "professional_law"]
    other = frame[~frame["task"].isin(settings.exclude_tasks)]
    rows = [(law.iloc[0], "professional_law"), (other.iloc[0], other.iloc[0]["task"])]
    outcomes = [
        OutcomeEvent(
            request_id=f"r{i}",
            task=task,
            prompt_hash=row["prompt_hash"],
            prompt=row["prompt"],
            chosen_model=strong,
            mode="route",
            score=1.0,
            accepted=True,
        )
        for i, (row, task) in enumerate(rows)
    ]
    d = ex._dir(state)
    (d / "outcomes.jsonl").write_text("".join(o.model_dump_json() + "\n" for o in outcomes))
    full, *_ = ex._datasets(state)
    fresh = dict(zip(full["prompt_hash"], full[FRESH], strict=True))
    assert strong in fresh[outcomes[0].prompt_hash]  # the excluded (repaired) task keeps its live label
    assert fresh[outcomes[1].prompt_hash] == ""  # a stable task's live label stays out

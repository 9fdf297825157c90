"""The replayer against a real emulator subprocess: summary counts, faults, feedback, drift."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from infra.emulator.corpus import Corpus
from infra.replay.config import ReplayConfig
from infra.replay.runner import Replayer
from infra.replay.scenarios import build_scenario
from infra.replay.summary import summarize
from services.catalog import load_catalog
from training.data import GPT4, MIXTRAL

pytestmark = pytest.mark.integration

DATASETS = ["gsm8k", "routerbench"]


@pytest.fixture(scope="module")
def emulator(data_dir):
    from infra.emulator.testing import run_emulator

    with run_emulator(data_dir=data_dir, datasets=DATASETS) as emu:
        yield emu


@pytest.fixture(scope="module")
def corpus(data_dir) -> Corpus:
    from infra.emulator.settings import EmulatorSettings

    return Corpus.load(data_dir, DATASETS, EmulatorSettings().corpus_cache_dir())


def _run(emulator, corpus, scenario, **kw):
    cfg = ReplayConfig(base_url=emulator.openai_base_url, emulator_url=emulator.base_url, **kw)
    rep = Replayer(cfg, scenario, corpus, load_catalog())
    asyncio.run(rep.run())
    return rep, summarize(rep.results, rep.elapsed_s, cfg, scenario, load_catalog())


def test_summary_counts_errors_feedback_and_quality_are_right(emulator, corpus):
    emulator.reset()
    emulator.set_faults(MIXTRAL, error_rate=0.2, error_statuses=[503], rate_limit_rate=0.1)
    rep, s = _run(
        emulator,
        corpus,
        build_scenario("steady", {"gsm8k": 1, "mbpp": 1}),
        model=MIXTRAL,
        count=80,
        concurrency=4,
        feedback_share=0.5,
        seed=3,
    )
    stats = emulator.stats()
    assert s["requests"] == 80 == stats["requests"][MIXTRAL]
    injected = stats["faults"]
    assert s["errors"] == {
        k: v
        for k, v in {"http_503": injected.get("error", 0), "http_429": injected.get("rate_limit", 0)}.items()
        if v
    }
    assert s["ok"] == 80 - sum(injected.values()) > 0
    assert s["share_by_model"] == {MIXTRAL: 1.0}
    assert set(s["by_task"]) <= {"gsm8k", "mbpp"} and sum(g["requests"] for g in s["by_task"].values()) == 80
    # quality is the recorded correctness of exactly the prompts answered
    ok = [r for r in rep.results if r.ok]
    graded = [r for r in ok if MIXTRAL in corpus.by_hash[r.prompt_hash].labels]  # mbpp has no grade for it
    assert s["graded"] == len(graded) > 0 and all(r.correct is None for r in ok if r not in graded)
    expected = sum(corpus.by_hash[r.prompt_hash].labels[MIXTRAL] for r in graded) / len(graded)
    assert s["quality"] == pytest.approx(expected)
    assert s["baseline_quality"] == pytest.approx(
        sum(corpus.by_hash[r.prompt_hash].labels[GPT4] for r in graded) / len(graded)
    )
    assert s["cost_vs_baseline"] < 0.05  # Mixtral is ~100x cheaper than GPT-4
    # every result, failed or not, carries when it was sent and when its handling ended
    assert all(0 < r.started_at <= r.finished_at for r in rep.results)
    sent = s["feedback"].get("sent", 0)
    received = emulator.feedback()
    assert sent == len(received) > 0
    by_id = {r.request_id: r.correct for r in ok}
    assert all(f["score"] == by_id[f["request_id"]] and f["source"] == "user" for f in received)


def test_all_strongest_run_matches_its_own_baseline(emulator, corpus):
    emulator.reset()
    _, s = _run(
        emulator,
        corpus,
        build_scenario("steady", {"routerbench": 1}),
        model=GPT4,
        count=30,
        stream=True,
        concurrency=3,
        feedback_share=0,
    )
    assert s["ok"] == 30 and s["errors"] == {}
    assert s["cost_vs_baseline"] == pytest.approx(1.0)
    assert s["quality_vs_baseline"] == pytest.approx(1.0)
    assert s["ttft_ms"] is not None and s["feedback"] == {}


def test_cheap_degrades_scenario_drifts_the_second_phase(emulator, corpus):
    emulator.reset()
    sc = build_scenario("cheap-degrades", {"gsm8k": 1}, degrade_model=MIXTRAL, degrade_task="gsm8k")
    _, s = _run(emulator, corpus, sc, model=MIXTRAL, count=60, concurrency=4, feedback_share=0)
    assert s["by_phase"]["healthy"]["requests"] == s["by_phase"]["degraded"]["requests"] == 30
    assert s["by_phase"]["healthy"]["quality"] > 0.3
    assert s["by_phase"]["degraded"]["quality"] == 0.0
    emulator.reset()


def test_same_seed_same_prompts(corpus):
    from infra.replay.runner import Plan

    sc = build_scenario("mix-shift", {"gsm8k": 1})
    a = [j.record.prompt_hash for _, j in Plan(build_scenario("steady"), corpus, 5).by_count(50)]
    b = [j.record.prompt_hash for _, j in Plan(build_scenario("steady"), corpus, 5).by_count(50)]
    assert a == b and len(set(a)) > 10
    assert sc.phase_counts(51) == [25, 26]


def test_cli_writes_json_and_markdown(emulator, data_dir, tmp_path):
    emulator.reset()
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.replay",
            "--base-url",
            emulator.openai_base_url,
            "--model",
            GPT4,
            "--emulator-url",
            emulator.base_url,
            "--count",
            "12",
            "--mix",
            "mbpp=1,winogrande=1",
            "--data-dir",
            str(data_dir),
            "--dataset",
            "routerbench",
            "--out",
            str(out),
            "--concurrency",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == 12 and summary["ok"] == 12
    md = (out / "summary.md").read_text()
    assert "| gpt-4-1106-preview | 1.000 |" in md and "requests 12, ok 12" in md


def test_duration_and_rate_bound_the_run(emulator, corpus):
    emulator.reset()
    rep, s = _run(
        emulator,
        corpus,
        build_scenario("mix-shift", {"gsm8k": 1}),
        model=GPT4,
        duration_s=2.0,
        rate=10,
        concurrency=4,
        feedback_share=0,
    )
    assert 15 <= s["requests"] <= 22  # ~10/s for 2 s
    assert s["elapsed_s"] < 4
    assert {r.phase for r in rep.results} == {"mmlu-heavy", "reasoning-heavy"}

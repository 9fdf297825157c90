"""Pure parts of the emulator: prompt lookup, answer rules, faults, drift, latency, judge, config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.emulator.corpus import Corpus, PromptRecord, _cache_key, count_tokens, normalize, split_words
from infra.emulator.faults import DriftRule, DriftTable, FaultSpec, FaultTable, Latency, LatencyProfile
from infra.emulator.judge import JudgePromptError, grade, judge_prompt, parse_grade
from infra.emulator.settings import ConfigFileError, load_config
from services.contracts import prompt_hash

A, B, C = "model-a", "model-b", "model-c"


def _rec(prompt: str, dataset: str, labels: dict, responses: dict | None = None, task: str | None = None):
    return PromptRecord(prompt, prompt_hash(prompt), task or dataset, dataset, labels, responses or {})


@pytest.fixture
def corpus() -> Corpus:
    return Corpus(
        [
            _rec(
                "What is 2+2?\nThink step by step.",
                "gsm8k",
                {A: 1.0, B: 0.0},
                {A: "2+2=4. #### 4", B: "#### 5"},
            ),
            _rec(
                "Capital of France?\nA. Paris\nB. Rome\nAnswer:", "mmlu", {A: 1.0, B: 0.0, C: 1.0}, task="geo"
            ),
            _rec("What is 2+2?\nThink step by step.", "gsm8k", {A: 0.0}, {A: "dup"}),
        ]
    )


def test_lookup_normalises_whitespace_and_keeps_first_duplicate(corpus):
    assert len(corpus) == 2
    rec = corpus.lookup("  What is 2+2?   Think\tstep by step. ")
    assert rec is not None and rec.responses[A] == "2+2=4. #### 4"
    assert corpus.lookup("What is 3+3?") is None
    assert corpus.by_hash[prompt_hash("What is 2+2?\nThink step by step.")] is rec
    assert corpus.by_hash[prompt_hash(normalize("What is 2+2?\nThink step by step."))] is rec


def test_recorded_answers_and_mmlu_letters(corpus):
    gsm = corpus.lookup("What is 2+2? Think step by step.")
    assert gsm.recorded(A).text == "2+2=4. #### 4" and gsm.recorded(A).correct == 1.0
    assert gsm.recorded(C).correct is None  # not graded: generic answer, unknown truth
    mm = corpus.lookup("Capital of France? A. Paris B. Rome Answer:")
    a, b, c = mm.recorded(A), mm.recorded(B), mm.recorded(C)
    assert a.text == c.text == f"Answer: {mm.right_letter}"
    assert b.text != a.text and b.correct == 0.0
    assert mm.grade(a.text) == 1.0 and mm.grade(b.text) == 0.0


def test_drifted_answer_is_wrong_and_graded_wrong(corpus):
    gsm = corpus.lookup("What is 2+2? Think step by step.")
    d = gsm.drifted(A)
    assert d.correct == 0.0 and d.drifted and d.text == "#### 5"
    assert gsm.grade(d.text) == 0.0
    assert gsm.drifted(B) == gsm.recorded(B)  # already wrong: unchanged
    mm = corpus.lookup("Capital of France? A. Paris B. Rome Answer:")
    assert mm.grade(mm.drifted(A).text) == 0.0


def test_split_words_round_trips_and_tokens_are_positive():
    for text in ["", "one", "  lead and trail  ", "multi\nline\n\n text\t"]:
        assert "".join(split_words(text)) == text
    assert count_tokens("") == 1 and count_tokens("a" * 40) == 10


def test_fault_schedule_is_seeded_and_follows_rates():
    spec = FaultSpec(error_rate=0.25, error_statuses=[500, 503], rate_limit_rate=0.25)
    one, two = FaultTable(seed=7, specs={A: spec}), FaultTable(seed=7, specs={A: spec})
    kinds_one = [one.decide(A, False).kind for _ in range(2000)]
    assert kinds_one == [two.decide(A, False).kind for _ in range(2000)]
    assert 0.2 < kinds_one.count("error") / 2000 < 0.3
    assert 0.2 < kinds_one.count("rate_limit") / 2000 < 0.3
    assert one.decide(B, False).kind == "none"  # no rule, no wildcard


def test_wildcard_max_faults_and_stream_only_cuts():
    table = FaultTable(specs={"*": FaultSpec(error_rate=1.0, max_faults=2)})
    assert [table.decide(A, False).kind for _ in range(3)] == ["error", "error", "none"]
    cut = FaultTable(specs={A: FaultSpec(stream_cut_rate=1.0, stream_cut_after=4)})
    assert cut.decide(A, stream=False).kind == "none"
    d = cut.decide(A, stream=True)
    assert (d.kind, d.cut_after) == ("stream_cut", 4)


def test_fault_spec_validation():
    with pytest.raises(ValidationError, match="sum"):
        FaultSpec(error_rate=0.7, hang_rate=0.7)
    with pytest.raises(ValidationError, match="400-599"):
        FaultSpec(error_rate=0.1, error_statuses=[302])


def test_drift_rules_start_time_task_and_rate():
    now = [1000.0]
    table = DriftTable(clock=lambda: now[0])
    table.add(DriftRule(model=A, task="gsm8k", start_in_s=10))
    assert not table.is_drifted(A, "gsm8k", "gsm8k", "h1")
    now[0] = 1011.0
    assert table.is_drifted(A, "gsm8k", "gsm8k", "h1")
    assert not table.is_drifted(B, "gsm8k", "gsm8k", "h1")
    assert not table.is_drifted(A, "mbpp", "routerbench", "h1")
    half = DriftTable([DriftRule(model=A, task="mmlu", wrong_rate=0.5, start_at=0)])
    hits = [half.is_drifted(A, f"t{i % 5}", "mmlu", f"h{i}") for i in range(2000)]
    assert 0.45 < sum(hits) / 2000 < 0.55
    assert hits == [half.is_drifted(A, f"t{i % 5}", "mmlu", f"h{i}") for i in range(2000)]


def test_latency_profiles_and_speed_zero():
    lat = Latency({A: LatencyProfile(ttft_s=0.5, tokens_per_s=50, jitter=0.2)}, speed=1.0)
    ttfts = [lat.ttft(A) for _ in range(500)]
    assert 0.4 <= min(ttfts) and max(ttfts) <= 0.6
    assert 0.8 * 2 <= lat.decode(A, 100) <= 1.2 * 2
    lat.speed = 0
    assert lat.ttft(A) == 0 and lat.decode(A, 100) == 0


def test_judge_prompt_round_trip(corpus):
    q = "What is 2+2?\nThink step by step."
    assert parse_grade(grade(corpus, judge_prompt(q, "2+2=4. #### 4")).reply) == 1.0
    assert parse_grade(grade(corpus, judge_prompt(q, "#### 5")).reply) == 0.0
    assert parse_grade(grade(corpus, judge_prompt(q, "no idea")).reply) == 0.5
    assert parse_grade(grade(corpus, judge_prompt("unknown question", "x")).reply) == 0.5
    with pytest.raises(JudgePromptError):
        grade(corpus, "Question: x Answer: y")
    with pytest.raises(ValueError):
        parse_grade("I think it is fine")


def test_config_file_validation(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("faults:\n  '*': {error_rate: 0.1}\ndrift:\n  - {model: m, task: gsm8k}\n")
    cfg = load_config(good)
    assert cfg.faults["*"].error_rate == 0.1 and cfg.drift[0].task == "gsm8k"
    bad = tmp_path / "b.json"
    bad.write_text('{"faults": {"m": {"error_rate": 2}}}')
    with pytest.raises(ConfigFileError, match="invalid"):
        load_config(bad)
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_corpus_cache_round_trips_and_follows_the_data(data_dir, tmp_path):
    cold = Corpus.load(data_dir, ["gsm8k"], cache_dir=tmp_path)
    files = list(tmp_path.glob("corpus-*.pkl"))
    assert len(files) == 1
    warm = Corpus.load(data_dir, ["gsm8k"], cache_dir=tmp_path)
    assert warm.by_text == cold.by_text and len(warm) > 1000
    assert _cache_key(data_dir, ["gsm8k"]) != _cache_key(data_dir, ["gsm8k", "routerbench"])
    files[0].write_bytes(b"not a pickle")  # a broken cache is rebuilt, not trusted
    assert Corpus.load(data_dir, ["gsm8k"], cache_dir=tmp_path).by_text == cold.by_text

"""Near-duplicate traffic (infra/replay/paraphrase.py): kinds, traps, the stream's share, determinism."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from infra.replay.paraphrase import (
    BENIGN_KINDS,
    TRAP_KINDS,
    make_variant,
    near_duplicate_traffic,
    variants,
)
from services.gateway.semcache import fingerprint, guard_refusal, normalise_text

MMLU = (
    "What is true for a type-Ia supernova?\nA. This type occurs in binary systems.\n"
    "B. This type occurs in young galaxies.\nC. This type produces gamma-ray bursts.\n"
    "D. This type produces high amounts of X-rays.\nAnswer:"
)
GSM8K = (
    "James decides to run 3 sprints 3 times a week.  He runs 60 meters each sprint.  "
    "How many total meters does he run a week?"
)
FEW_SHOT = (
    "Which is a gas?\nA) ice\nB) steam\nAnswer:\nB\n\n"
    "Which of these is the largest planet?\nA) Mars\nB) Jupiter\nC) Venus\nAnswer:"
)
ROWS = [
    {"id": "mmlu/astronomy/0", "task": "astronomy", "prompt": MMLU},
    {"id": "gsm8k/0", "task": "gsm8k", "prompt": GSM8K},
    {"id": "routerbench/arc.1", "task": "arc-challenge", "prompt": FEW_SHOT},
]


def _options(text: str) -> list[str]:
    return re.findall(r"^\(?[A-J][.)]\s*(.+)$", text, re.MULTILINE)


def test_benign_kinds_keep_the_answer_and_the_structure() -> None:
    for row in ROWS:
        for v in variants(row["id"], row["prompt"], BENIGN_KINDS, seed=3):
            assert v.same_answer and v.source_id == row["id"]
            assert guard_refusal(fingerprint(row["prompt"]), fingerprint(v.prompt)) is None, v
    exact = variants("gsm8k/0", GSM8K, ["exact"])[0]
    assert exact.prompt == GSM8K
    case = make_variant("case", "x", GSM8K, random.Random(0))
    whitespace = make_variant("whitespace", "x", GSM8K, random.Random(0))
    assert normalise_text(case.prompt) == normalise_text(GSM8K) == normalise_text(whitespace.prompt)
    assert make_variant("prefix", "x", GSM8K, random.Random(0)).prompt.endswith(GSM8K)


def test_reorder_options_moves_the_contents_not_the_letters() -> None:
    v = make_variant("reorder_options", "m", MMLU, random.Random(1))
    assert v is not None and not v.same_answer
    assert sorted(_options(v.prompt)) == sorted(_options(MMLU)) and _options(v.prompt) != _options(MMLU)
    assert v.prompt.startswith("What is true for a type-Ia supernova?\nA. ")
    # few-shot: only the question asked is edited, the examples stay
    f = make_variant("reorder_options", "f", FEW_SHOT, random.Random(1))
    assert f.prompt.startswith("Which is a gas?\nA) ice\nB) steam\nAnswer:\nB\n\n")
    assert _options(f.prompt)[2:] != _options(FEW_SHOT)[2:]
    assert make_variant("reorder_options", "g", GSM8K, random.Random(1)) is None


def test_change_numbers_changes_exactly_one_number_of_the_problem() -> None:
    for seed in range(20):
        v = make_variant("change_numbers", "g", GSM8K, random.Random(seed))
        old, new = re.findall(r"\d+", GSM8K), re.findall(r"\d+", v.prompt)
        assert not v.same_answer and len(old) == len(new)
        assert sum(a != b for a, b in zip(old, new, strict=True)) == 1
        assert re.sub(r"\d+", "#", v.prompt) == re.sub(r"\d+", "#", GSM8K)


def test_negate_puts_a_negation_or_flips_a_superlative_in_the_question() -> None:
    seen = set()
    for seed in range(20):
        for src in (MMLU, GSM8K, FEW_SHOT):
            v = make_variant("negate", "n", src, random.Random(seed))
            assert v is not None and not v.same_answer
            assert guard_refusal(fingerprint(src), fingerprint(v.prompt)) == "negation"
            seen.add(v.prompt)
    assert "How many total meters does he not run a week?" in " ".join(seen)
    assert any("smallest planet" in p for p in seen) and any("is not the largest" in p for p in seen)


def test_traffic_has_the_share_of_near_duplicates_of_earlier_requests() -> None:
    rows = [
        {"id": f"r{i}", "task": ROWS[i % 3]["task"], "prompt": ROWS[i % 3]["prompt"] + f" #{i}"}
        for i in range(700)
    ]
    traffic = near_duplicate_traffic(rows, share=0.30, seed=7)
    fresh = [t for t in traffic if t.kind == "fresh"]
    dups = [t for t in traffic if t.kind != "fresh"]
    assert [t.id for t in fresh] == [r["id"] for r in rows]  # every row once, in order
    assert len(dups) / len(traffic) == pytest.approx(0.30, abs=0.002)
    position = {t.id: i for i, t in enumerate(traffic)}
    for i, t in enumerate(traffic):
        if t.kind != "fresh":
            assert position[t.source_id] < i  # a near-duplicate of an *earlier* request
            assert t.same_answer == (t.kind in BENIGN_KINDS)
    kinds = Counter(t.kind for t in dups)
    assert set(kinds) == set(BENIGN_KINDS) | set(TRAP_KINDS)
    assert len({t.id for t in traffic}) == len(traffic)


def test_traffic_is_deterministic_per_seed_and_honours_the_mix() -> None:
    a = near_duplicate_traffic(ROWS * 1, share=0.5, seed=1)
    assert a == near_duplicate_traffic(ROWS, share=0.5, seed=1)
    rows = [{**r, "id": f"{r['id']}-{i}"} for i in range(50) for r in ROWS]
    only = near_duplicate_traffic(rows, share=0.3, mix={"negate": 1.0}, seed=2)
    assert {t.kind for t in only} == {"fresh", "negate"}
    assert near_duplicate_traffic(rows, share=0.3, seed=2) != near_duplicate_traffic(rows, share=0.3, seed=3)
    with pytest.raises(ValueError):
        near_duplicate_traffic(rows, mix={"rot13": 1.0})
    with pytest.raises(ValueError):
        near_duplicate_traffic(rows, share=1.0)

"""The semantic cache (services/gateway/semcache.py): what is served, when, to whom."""

from __future__ import annotations

import numpy as np
import pytest

from services.gateway.semcache import (
    CacheConfig,
    SemanticCache,
    TaskCachePolicy,
    cache_namespace,
    fingerprint,
    guard_refusal,
)

DIM = 384


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, cos: float, seed: int = 99) -> np.ndarray:
    """A unit vector at cosine ``cos`` from ``v``."""
    r = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    r -= r.dot(v) * v
    r /= np.linalg.norm(r)
    return (cos * v + np.sqrt(1 - cos**2) * r).astype(np.float32)


NS = cache_namespace("acme", "switchyard/auto", {"messages": [{"role": "user", "content": "x"}]})
Q = "How many meters does James run in a week if he runs 3 sprints of 60 meters 3 times a week?"
ANSWER = {"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant", "content": "540"}}]}


def make(clock: Clock | None = None, **kw) -> SemanticCache:  # noqa: ANN003
    return SemanticCache(
        CacheConfig(**{"threshold": 0.9, "use_measured_defaults": False, **kw}), clock=clock or Clock()
    )


def test_exact_repeat_hits_whatever_the_threshold_and_without_a_vector() -> None:
    cache = make(threshold=1.0)
    assert cache.offer("r1", NS, "gsm8k", Q, unit(1), ANSWER, good=True)
    hit = cache.lookup(NS, "gsm8k", "  " + Q.upper() + " ", None)
    assert hit is not None and hit.exact and hit.answer == ANSWER
    assert hit.source_request_id == "r1" and hit.similarity == 1.0 and hit.task == "gsm8k"


def test_semantic_hit_needs_the_tasks_threshold() -> None:
    cache = make(tasks={"gsm8k": TaskCachePolicy(threshold=0.97)})
    v = unit(1)
    cache.offer("r1", NS, "gsm8k", Q, v, ANSWER, good=True)
    paraphrase = "Please answer: " + Q
    assert cache.lookup(NS, "gsm8k", paraphrase, near(v, 0.95)) is None  # above default, below task's
    hit = cache.lookup(NS, "gsm8k", paraphrase, near(v, 0.98))
    assert hit is not None and not hit.exact and hit.similarity == pytest.approx(0.98, abs=1e-3)
    # another task with the default threshold of 0.9 serves at 0.95
    cache.offer("r2", NS, "other", Q, v, ANSWER, good=True)
    assert cache.lookup(NS, "other", paraphrase, near(v, 0.95)) is not None


def test_unnormalised_vectors_are_normalised() -> None:
    cache = make()
    v = unit(1)
    cache.offer("r1", NS, "t", Q, 7.0 * v, ANSWER, good=True)
    hit = cache.lookup(NS, "t", Q + " Thanks", 0.5 * near(v, 0.95))
    assert hit is not None and hit.similarity == pytest.approx(0.95, abs=1e-3)


def test_ttl_expires_entries() -> None:
    clock = Clock()
    cache = make(clock, ttl_s=60, tasks={"fast": TaskCachePolicy(ttl_s=5)})
    cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=True)
    cache.offer("r2", NS, "fast", Q, unit(1), ANSWER, good=True)
    clock.now += 10
    assert cache.lookup(NS, "fast", Q, unit(1)) is None
    assert cache.lookup(NS, "t", Q, unit(1)) is not None
    clock.now += 60
    assert cache.lookup(NS, "t", Q, unit(1)) is None
    assert cache.stats()["entries"] == 0


def test_lru_bound_evicts_the_least_recently_used() -> None:
    cache = make(capacity=3)
    for i in range(3):
        cache.offer(f"r{i}", NS, "t", f"question number {i}", unit(i), {"i": i}, good=True)
    assert cache.lookup(NS, "t", "question number 0", unit(0)) is not None  # r0 now most recent
    cache.offer("r3", NS, "t", "question number 3", unit(3), {"i": 3}, good=True)
    assert len(cache) == 3
    assert cache.lookup(NS, "t", "question number 1", unit(1)) is None  # evicted
    assert cache.lookup(NS, "t", "question number 0", unit(0)) is not None
    assert cache.stats()["evicted"] == 1


def test_namespaces_isolate_tenants_models_context_and_params() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}]
    base = cache_namespace("acme", "switchyard/auto", {"messages": msgs, "temperature": 0})
    assert base == cache_namespace(
        "acme",
        "switchyard/auto",
        {
            "messages": msgs[:1] + [{"role": "user", "content": "another last question"}],
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u1",
            "metadata": {"a": 1},
        },
    )
    others = [
        cache_namespace("globex", "switchyard/auto", {"messages": msgs, "temperature": 0}),
        cache_namespace(None, "switchyard/auto", {"messages": msgs, "temperature": 0}),
        cache_namespace("acme", "gpt-4o", {"messages": msgs, "temperature": 0}),
        cache_namespace(
            "acme",
            "switchyard/auto",
            {"messages": [{"role": "system", "content": "Be long."}, msgs[1]], "temperature": 0},
        ),
        cache_namespace("acme", "switchyard/auto", {"messages": msgs, "temperature": 0.7}),
        cache_namespace("acme", "switchyard/auto", {"messages": msgs, "temperature": 0, "max_tokens": 5}),
        cache_namespace("acme", "switchyard/auto", {"messages": msgs, "temperature": 0, "seed": 3}),
        cache_namespace(
            "acme",
            "switchyard/auto",
            {"messages": msgs, "temperature": 0, "response_format": {"type": "json_object"}},
        ),
        cache_namespace(
            "acme",
            "switchyard/auto",
            {"messages": msgs, "temperature": 0, "tools": [{"type": "function", "function": {"name": "f"}}]},
        ),
    ]
    assert base not in others and len(set(others)) == len(others)
    cache = make()
    cache.offer("r1", base, "t", Q, unit(1), ANSWER, good=True)
    assert cache.lookup(base, "t", Q, unit(1)) is not None
    for ns in others:
        assert cache.lookup(ns, "t", Q, unit(1)) is None


def test_weak_answers_wait_for_a_positive_signal() -> None:
    cache = make()
    assert not cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=False)
    assert cache.lookup(NS, "t", Q, unit(1)) is None
    assert cache.stats()["pending"] == 1
    assert cache.confirm("r1")
    hit = cache.lookup(NS, "t", Q, unit(1))
    assert hit is not None and hit.source_request_id == "r1"
    assert cache.stats()["pending"] == 0


def test_pending_is_bounded_and_expires() -> None:
    clock = Clock()
    cache = make(clock, pending_capacity=2, pending_ttl_s=30)
    for i in range(3):
        cache.offer(f"r{i}", NS, "t", f"q {i}", unit(i), ANSWER, good=False)
    assert not cache.confirm("r0")  # dropped: oldest beyond the bound
    clock.now += 31
    assert not cache.confirm("r1")  # waited too long
    assert cache.lookup(NS, "t", "q 1", unit(1)) is None


def test_rejected_answer_is_never_served_even_if_confirmed_later() -> None:
    cache = make()
    cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=False)
    assert cache.reject("r1")
    assert not cache.confirm("r1")
    assert not cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=True)
    assert cache.lookup(NS, "t", Q, unit(1)) is None
    # a strong answer already stored leaves at once on negative feedback
    cache.offer("r2", NS, "t", Q, unit(1), ANSWER, good=True)
    assert cache.lookup(NS, "t", Q, unit(1)) is not None
    assert cache.reject("r2")
    assert cache.lookup(NS, "t", Q, unit(1)) is None


def test_negative_feedback_on_a_served_hit_drops_its_source() -> None:
    cache = make()
    cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=True)
    assert cache.lookup(NS, "t", Q, unit(1), request_id="r9").source_request_id == "r1"
    assert cache.reject("r9")
    assert cache.lookup(NS, "t", Q, unit(1)) is None


@pytest.mark.parametrize(
    ("stored", "asked", "reason"),
    [
        (
            "James runs 3 sprints of 60 meters 3 times a week. How many meters a week?",
            "James runs 3 sprints of 70 meters 3 times a week. How many meters a week?",
            "numbers",
        ),
        ("A shop sells 1,200 apples for $5 each.", "A shop sells 1,200 apples for $6 each.", "numbers"),
        (
            "Which of the following is true of mitosis?",
            "Which of the following is not true of mitosis?",
            "negation",
        ),
        ("Which planet is the largest?", "Which planet is the smallest?", "negation"),
        ("How much does Joe's bag weigh?", "How much does Joe not's bag weigh?", "negation"),
        (
            "Which of these is a mammal?\nA. Shark\nB. Whale\nC. Trout\nD. Eel\nAnswer:",
            "Which of these is a mammal?\nA. Whale\nB. Shark\nC. Trout\nD. Eel\nAnswer:",
            "options",
        ),
    ],
)
def test_guard_refuses_answer_changing_edits(stored: str, asked: str, reason: str) -> None:
    assert guard_refusal(fingerprint(stored), fingerprint(asked)) == reason
    cache = make(threshold=0.5)
    v = unit(5)
    cache.offer("r1", NS, "t", stored, v, ANSWER, good=True)
    assert cache.lookup(NS, "t", asked, near(v, 0.999)) is None
    assert cache.stats()[f"guard_{reason}"] == 1


@pytest.mark.parametrize(
    "asked",
    [
        "Please answer: " + Q,
        "question: " + Q.lower(),
        Q + " Thanks",
        Q.replace("?", "") + "\n\nThanks in advance.",
        Q.replace("3 sprints", "3  sprints"),
    ],
)
def test_guard_lets_benign_paraphrases_through(asked: str) -> None:
    assert guard_refusal(fingerprint(Q), fingerprint(asked)) is None
    cache = make()
    cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=True)
    assert cache.lookup(NS, "t", asked, near(unit(1), 0.97)) is not None


def test_guard_skips_to_a_neighbour_that_passes() -> None:
    cache = make(threshold=0.8)
    v = unit(1)
    cache.offer("r1", NS, "t", "Is 7 a prime number?", near(v, 0.99, seed=1), {"a": "yes"}, good=True)
    cache.offer("r2", NS, "t", "Is 9 a prime number?", near(v, 0.95, seed=2), {"a": "no"}, good=True)
    hit = cache.lookup(NS, "t", "Please answer: is 9 a prime number?", v)
    assert hit is not None and hit.source_request_id == "r2"


def test_policy_switch_off_and_threshold_change() -> None:
    cache = make()
    cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=True)
    cache.set_policy("t", enabled=False)
    assert not cache.policy("t").enabled
    assert cache.lookup(NS, "t", Q, unit(1)) is None
    assert not cache.offer("r2", NS, "t", "another", unit(2), ANSWER, good=True)
    cache.set_policy("t", enabled=True, threshold=0.99)
    assert cache.policy("t").threshold == 0.99 and cache.policy("t").enabled
    assert cache.lookup(NS, "t", Q + " Thanks", near(unit(1), 0.97)) is None  # now below the threshold
    assert cache.lookup(NS, "t", Q, unit(1)) is not None  # exact still counts
    with pytest.raises(ValueError):
        cache.set_policy("t", threshold=1.5)


def test_globally_disabled_cache_serves_nothing() -> None:
    cache = make(enabled=False)
    assert not cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=True)
    assert cache.lookup(NS, "t", Q, unit(1)) is None


def test_stats_count_hits_by_kind() -> None:
    cache = make()
    cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=True)
    cache.lookup(NS, "t", Q, unit(1))
    cache.lookup(NS, "t", "Please answer: " + Q, near(unit(1), 0.97))
    cache.lookup(NS, "t", "something else entirely", unit(2))
    s = cache.stats()
    assert (s["entries"], s["hit_exact"], s["hit_semantic"], s["miss"]) == (1, 1, 1, 1)


def test_many_deletions_keep_the_index_consistent() -> None:
    cache = make(capacity=50)
    for i in range(500):
        cache.offer(f"r{i}", NS, "t", f"question {i}", unit(i), {"i": i}, good=True)
        if i % 7 == 0:
            cache.reject(f"r{i}")
    assert len(cache) <= 50
    for i in range(450, 500):
        hit = cache.lookup(NS, "t", f"Question: question {i}", unit(i))
        if i % 7 == 0:
            assert hit is None
        else:
            assert hit is not None and hit.answer == {"i": i}


def test_contractions_count_as_negations() -> None:
    assert guard_refusal(fingerprint("Why doesn't ice sink?"), fingerprint("Why does not ice sink?")) is None
    assert (
        guard_refusal(fingerprint("Why does ice sink?"), fingerprint("Why doesn't ice sink?")) == "negation"
    )


def test_measured_per_task_defaults_apply_under_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway import semcache

    monkeypatch.setitem(semcache.DEFAULT_TASK_POLICIES, "winogrande", TaskCachePolicy(threshold=1.0))
    cache = SemanticCache(CacheConfig(threshold=0.9))
    assert cache.policy("winogrande").threshold == 1.0 and cache.policy("other").threshold == 0.9
    mine = SemanticCache(CacheConfig(tasks={"winogrande": TaskCachePolicy(threshold=0.97)}))
    assert mine.policy("winogrande").threshold == 0.97
    off = SemanticCache(CacheConfig(threshold=0.9, use_measured_defaults=False))
    assert off.policy("winogrande").threshold == 0.9


def test_threshold_one_means_exact_repeats_only() -> None:
    cache = make(tasks={"winogrande": TaskCachePolicy(threshold=1.0)})
    cache.offer(
        "r1", NS, "winogrande", "The trophy didn't fit because the _ was small.", unit(1), ANSWER, good=True
    )
    # same vector (an edit outside the encoder's window), different text: not served
    assert cache.lookup(NS, "winogrande", "The trophy didn't fit because the _ was big.", unit(1)) is None
    assert (
        cache.lookup(NS, "winogrande", "the trophy didn't fit because the _ was small.", unit(1)) is not None
    )


def test_a_vector_of_another_embedding_space_falls_back_to_exact_match() -> None:
    cache = make()
    cache.offer("r1", NS, "t", Q, unit(1), ANSWER, good=True)
    assert cache.lookup(NS, "t", "Please answer: " + Q, np.ones(256, dtype=np.float32)) is None
    assert cache.lookup(NS, "t", Q, np.ones(256, dtype=np.float32)) is not None
    cache.clear()
    assert len(cache) == 0 and cache.lookup(NS, "t", Q, None) is None
    cache.offer("r2", NS, "t", Q, np.ones(256, dtype=np.float32), ANSWER, good=True)
    assert cache.lookup(NS, "t", Q + " Thanks", np.ones(256, dtype=np.float32)) is not None


def test_large_buckets_switch_to_hnsw_and_survive_deletions() -> None:
    cache = make(capacity=300, hnsw_min_entries=100)
    for i in range(400):
        cache.offer(f"r{i}", NS, "t", f"question {i}", unit(i), {"i": i}, good=True)
    for i in range(300, 330):
        cache.reject(f"r{i}")
    bucket = next(iter(cache._buckets.values()))
    assert bucket.hnsw and len(bucket.live) == len(cache) == 270
    for i in range(300, 400, 3):
        hit = cache.lookup(NS, "t", f"Question: question {i}", near(unit(i), 0.99, seed=i))
        assert (hit is None) if i < 330 else (hit is not None and hit.answer == {"i": i})

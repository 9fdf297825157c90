"""The call <-> feedback join: late, early and duplicate feedback, redelivered calls, TTL."""

from __future__ import annotations

from services.contracts import CallEvent, FeedbackEvent, prompt_hash
from streams.join import CallFeedbackJoin

CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
TIERS = {CHEAP: "budget", STRONG: "frontier"}


def call(rid: str, **kw) -> CallEvent:
    base = dict(
        request_id=rid,
        task="mmlu_anatomy",
        prompt_hash=prompt_hash(rid),
        requested_model="switchyard/auto",
        mode="route",
        scores={CHEAP: 0.8, STRONG: 0.95},
        chosen_model=CHEAP,
        cost_usd=0.001,
        latency_ms=120,
    )
    return CallEvent(**{**base, **kw})


def join() -> CallFeedbackJoin:
    return CallFeedbackJoin({}, ttl_s=100.0, tiers=TIERS, accept_threshold=0.5)


def test_late_feedback_joins_its_call() -> None:
    j = join()
    assert j.on_call(call("r1"), now=0) is None
    out = j.on_feedback(FeedbackEvent(request_id="r1", score=0.2, source="judge"), now=5)
    assert out is not None
    assert (out.request_id, out.task, out.chosen_model, out.tier) == ("r1", "mmlu_anatomy", CHEAP, "budget")
    assert out.accepted is False and out.score == 0.2 and out.predicted == 0.8
    assert out.feedback_source == "judge"


def test_early_feedback_waits_for_its_call() -> None:
    j = join()
    assert j.on_feedback(FeedbackEvent(request_id="r2", label="good"), now=0) is None
    out = j.on_call(call("r2"), now=1)
    assert out is not None and out.accepted is True and out.score == 1.0
    assert j.stats.early_feedback == 1 and j.stats.outcomes == 1


def test_duplicate_feedback_and_redelivered_calls_are_ignored() -> None:
    j = join()
    fb = FeedbackEvent(request_id="r3", score=1.0)
    j.on_call(call("r3"), now=0)
    assert j.on_feedback(fb, now=1) is not None
    assert j.on_feedback(fb, now=2) is None  # same feedback redelivered
    assert j.on_feedback(FeedbackEvent(request_id="r3", score=0.0), now=3) is None  # a second signal
    assert j.on_call(call("r3"), now=4) is None  # call redelivered after the join
    # early duplicates too
    j.on_feedback(FeedbackEvent(request_id="r4", score=1.0), now=0)
    assert j.on_feedback(FeedbackEvent(request_id="r4", score=0.0), now=0) is None
    out = j.on_call(call("r4"), now=1)
    assert out is not None and out.accepted is True
    assert j.on_call(call("r5"), now=0) is None
    assert j.on_call(call("r5"), now=1) is None
    assert j.stats.duplicates == 5 and j.stats.outcomes == 2


def test_entries_expire_after_the_ttl() -> None:
    j = join()
    j.on_call(call("old"), now=0)
    j.on_call(call("new"), now=150)
    assert j.sweep(now=160) == 1
    assert "old" not in j.store and "new" in j.store
    assert j.stats.expired == 1
    # feedback for the expired call now waits as early feedback and does not produce an outcome
    assert j.on_feedback(FeedbackEvent(request_id="old", score=1.0), now=161) is None


def test_failed_call_gives_no_outcome() -> None:
    j = join()
    j.on_call(call("r6", status="error", chosen_model=None, error="upstream 502"), now=0)
    assert j.on_feedback(FeedbackEvent(request_id="r6", score=1.0), now=1) is None
    assert j.stats.unjoinable == 1


def test_join_state_lives_in_the_store() -> None:
    store: dict = {}
    CallFeedbackJoin(store, ttl_s=100, tiers=TIERS).on_call(call("r7"), now=0)
    # a new joiner on the same store (a restarted worker) finishes the join
    out = CallFeedbackJoin(store, ttl_s=100, tiers=TIERS).on_feedback(
        FeedbackEvent(request_id="r7", score=0.9), now=1
    )
    assert out is not None and out.accepted

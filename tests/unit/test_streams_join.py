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


def test_an_entry_restored_from_its_changelog_joins_to_the_same_outcome() -> None:
    """In memory a pending call is its validated event; after a restart it is the JSON the
    changelog held. Both give the same outcome, and the changelog JSON is the plain entry's."""
    import json

    from streams.join import entry_json, entry_plain

    live, restored = join(), join()
    c = call("r9", prompt="What is 2+2?", router_version="v3", escalated=True)
    live.on_call(c, now=1, partition=2)
    entry = live.store["r9"]
    raw = entry_json(entry)
    assert json.loads(raw) == json.loads(json.dumps(entry_plain(entry)))
    assert set(json.loads(raw)["call"]) >= {"request_id", "ts", "task", "scores", "chosen_model", "status"}
    restored.store["r9"] = json.loads(raw)  # what Faust's recovery puts in the table
    fb = FeedbackEvent(request_id="r9", label="good", source="user")
    a, b = live.on_feedback(fb, now=2), restored.on_feedback(fb, now=2)
    assert a is not None and b is not None
    assert a.model_dump(mode="json") == b.model_dump(mode="json")
    assert a.to_bytes() == b.to_bytes() and a.accepted and a.escalated and a.predicted == 0.8


def test_a_failed_call_has_no_outcome_live_or_restored() -> None:
    import json

    from streams.join import entry_json

    live, restored = join(), join()
    live.on_call(call("r8", status="error", error="upstream 500"), now=1)
    restored.store["r8"] = json.loads(entry_json(live.store["r8"]))
    fb = FeedbackEvent(request_id="r8", score=1.0)
    assert live.on_feedback(fb, now=2) is None and restored.on_feedback(fb, now=2) is None
    assert live.stats.unjoinable == restored.stats.unjoinable == 1


def test_the_monitors_batch_records_decode_in_order_and_isolate_a_broken_item() -> None:
    import json

    from streams.codecs import decode_outcomes

    j = join()
    outs = []
    for i in range(5):
        j.on_call(call(f"b{i}"), now=0)
        outs.append(j.on_feedback(FeedbackEvent(request_id=f"b{i}", score=i % 2), now=1))
    raws = [o.to_bytes() for o in outs]
    clean, bad = decode_outcomes(b"[" + b",".join(raws) + b"]")
    assert bad == [] and [o.request_id for o in clean] == [f"b{i}" for i in range(5)]
    assert [o.model_dump() for o in clean] == [o.model_dump() for o in outs]
    broken = b"[" + raws[0] + b',{"schema_version":2},' + raws[1] + b"]"
    kept, bad = decode_outcomes(broken)
    assert [o.request_id for o in kept] == ["b0", "b1"]
    assert (
        len(bad) == 1 and json.loads(bad[0][0]) == {"schema_version": 2} and "OutcomeEvent" in str(bad[0][1])
    )
    for junk in (b"not json", b'{"a": 1}'):
        none, bad = decode_outcomes(junk)
        assert none == [] and bad[0][0] == junk

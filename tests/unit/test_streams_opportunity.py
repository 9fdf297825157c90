"""The savings-opportunity detector: fires on tasks served by expensive tiers without (or with
good) cheap-tier evidence, never on a task that already routes cheaply, resolves when the task
moves to cheaper tiers, and survives a restart through its state."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

from services.contracts import OutcomeEvent
from services.contracts.events import RoutingMode
from streams.opportunity import OpportunityConfig, OpportunityDetector, summary

STRONG, CHEAP = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def outcomes(
    n: int, cheap_share: float, cheap_acc: float, strong_acc: float = 0.9, seed: int = 0, start: int = 0
):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cheap = rng.random() < cheap_share
        out.append(
            OutcomeEvent(
                request_id=f"r{start + i}",
                ts=T0 + timedelta(seconds=start + i),
                task="t",
                prompt_hash="h" * 64,
                chosen_model=CHEAP if cheap else STRONG,
                tier="budget" if cheap else "frontier",
                mode=RoutingMode.ROUTE,
                score=1.0,
                accepted=rng.random() < (cheap_acc if cheap else strong_acc),
            )
        )
    return out


def detector(**kw) -> OpportunityDetector:
    return OpportunityDetector(OpportunityConfig(**kw), cheap_tier="budget")


def test_a_new_task_sent_to_the_strong_tier_is_an_opportunity_once() -> None:
    det = detector()
    changes = det.update(outcomes(100, cheap_share=0.0, cheap_acc=0.0), T0.timestamp() + 100)
    assert [c.kind for c in changes] == ["fire"] and changes[0].reason == "missing"
    assert "informational" in summary("t", changes[0])
    assert det.update(outcomes(100, 0.0, 0.0, start=100), T0.timestamp() + 200) == []  # once per episode


def test_a_task_that_already_routes_cheaply_is_never_flagged() -> None:
    det = detector()
    for k in range(20):
        assert det.update(outcomes(100, cheap_share=0.35, cheap_acc=0.8, seed=k, start=100 * k), 0) == []


def test_enough_bad_cheap_evidence_keeps_quiet_good_evidence_fires() -> None:
    bad = detector()  # the router sends the task to GPT-4 for a reason: the cheap tier fails there
    assert bad.update(outcomes(300, cheap_share=0.15, cheap_acc=0.3, seed=1), 0) == []
    good = detector()  # shadow samples say the cheap tier would do
    [c] = good.update(outcomes(300, cheap_share=0.15, cheap_acc=0.97, strong_acc=0.9, seed=2), 0)
    assert c.reason == "cheap_good" and c.evidence["cheap_labels"] >= 30


def test_stale_cheap_evidence_is_an_opportunity() -> None:
    det = detector(stale_s=3600)
    det.update(outcomes(300, cheap_share=0.15, cheap_acc=0.3, seed=3), T0.timestamp() + 300)
    later = T0.timestamp() + 300 + 2 * 3600
    [c] = det.update(outcomes(1, cheap_share=0.0, cheap_acc=0.0, start=400), later)
    assert c.reason == "stale"


def test_resolves_when_the_task_moves_to_cheaper_tiers_and_cools_down() -> None:
    det = detector(window=120, cooldown_s=600)
    assert det.update(outcomes(120, 0.0, 0.0), 0)[0].kind == "fire"
    changes = det.update(outcomes(120, cheap_share=0.9, cheap_acc=0.95, start=200), 100)
    assert [c.kind for c in changes] == ["resolve"]
    assert det.update(outcomes(120, 0.0, 0.0, start=400), 200) == []  # within the cool-down
    assert det.update(outcomes(120, 0.0, 0.0, start=600), 1000)[0].kind == "fire"


def test_state_round_trips_through_json_like_a_table_entry() -> None:
    cfg = OpportunityConfig()
    det = OpportunityDetector(cfg, "budget")
    det.update(outcomes(40, 0.0, 0.0), 0)  # not enough yet
    restored = OpportunityDetector.from_state(cfg, "budget", json.loads(json.dumps(det.to_state())))
    assert restored.evidence(0) == det.evidence(0)
    assert restored.update(outcomes(40, 0.0, 0.0, start=40), 0)[0].kind == "fire"
    assert len(json.dumps(restored.to_state())) < 2000  # a small table entry, whatever the traffic


def test_shadow_samples_are_evidence_not_traffic() -> None:
    det = detector()
    routed = outcomes(100, cheap_share=0.0, cheap_acc=0.0)
    shadow = [
        o.model_copy(
            update={"mode": RoutingMode.EXPLORE, "chosen_model": CHEAP, "tier": "budget", "accepted": True}
        )
        for o in outcomes(60, cheap_share=0.0, cheap_acc=0.0, start=1000)
    ]
    [c] = det.update(routed + shadow, T0.timestamp() + 2000)
    ev = c.evidence
    assert ev["outcomes"] == 100 and ev["expensive_share"] == 1.0  # shadows do not dilute the share
    assert ev["cheap_labels"] == 60 and ev["shadow_labels"] == 60 and c.reason == "cheap_good"


def test_the_notice_carries_the_start_of_the_window_it_judged() -> None:
    det = detector()
    first = outcomes(40, cheap_share=0.0, cheap_acc=0.0)
    assert det.update(first, 0) == []
    [c] = det.update(outcomes(40, cheap_share=0.0, cheap_acc=0.0, start=40), 0)
    # the retrain must read every outcome the decision saw, not only the batch that tipped it
    assert c.window_start == first[0].ts.timestamp()
    # the window slides: once the oldest buckets are gone, it starts later
    det.update(outcomes(600, cheap_share=0.0, cheap_acc=0.0, start=80), 0)
    assert det.window_start() is not None and det.window_start() > first[0].ts.timestamp()
    assert len(det.since) == len(det.buckets) <= OpportunityDetector.BUCKETS
    # a state written before the window's times were kept: unknown, not wrong
    old = {k: v for k, v in det.to_state().items() if k != "since"}
    assert OpportunityDetector.from_state(OpportunityConfig(), "budget", old).window_start() is None


def test_a_few_failing_cheap_answers_are_evidence_not_its_absence() -> None:
    """A new task where the cheap model is broken (the demo's drift story): the router sends some
    of it to the cheap tier, those answers fail, and that rules the cheap tier out."""
    det = detector()
    assert det.update(outcomes(100, cheap_share=0.15, cheap_acc=0.0, seed=4), 0) == []
    promising = detector()  # the same thin evidence, but every cheap answer was right
    [c] = promising.update(outcomes(100, cheap_share=0.15, cheap_acc=1.0, seed=4), 0)
    assert c.reason == "thin"

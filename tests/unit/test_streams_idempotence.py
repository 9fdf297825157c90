"""Exactly-once application across a replay (streams/idempotence.py, the monitor's marks, the join's
read-back of published ids): pure, no broker."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from services.contracts import OutcomeEvent
from streams import windows
from streams.drift import TaskMonitor
from streams.idempotence import (
    SRC,
    PublishedIds,
    applied_upto,
    batch_ids,
    fresh,
    is_applied,
    marked,
    outcome_ids,
)
from streams.replayguard import ReplayGuard
from streams.settings import StreamsSettings


def _outcome(i: int, accepted: bool = True, task: str = "t") -> OutcomeEvent:
    return OutcomeEvent(
        request_id=f"r{i}",
        task=task,
        prompt_hash="h",
        chosen_model="m",
        tier="budget",
        mode="route",
        predicted=0.8,
        score=1.0 if accepted else 0.0,
        accepted=accepted,
        cost_usd=0.001,
        latency_ms=100,
    )


def _records(
    n: int, per: int = 5, partition: int = 2, start: int = 0
) -> list[tuple[int, int, list[OutcomeEvent]]]:
    """``n`` input records (partition, offset, outcomes) of ``per`` outcomes each."""
    return [(partition, start + k, [_outcome((start + k) * per + j) for j in range(per)]) for k in range(n)]


def test_marks_say_what_is_applied() -> None:
    assert applied_upto(None) is None and applied_upto({}) is None and applied_upto({"n": 3}) is None
    entry = marked({"n": 3}, (2, 41))
    assert entry[SRC] == [2, 41] and applied_upto(entry) == (2, 41)
    assert is_applied(entry, 2, 41) and is_applied(entry, 2, 0)
    assert not is_applied(entry, 2, 42)
    assert not is_applied(entry, 3, 1)  # offsets of another partition are not comparable
    assert marked({"n": 1}, None) == {"n": 1}
    # a mark survives the changelog (JSON) round trip
    assert applied_upto(json.loads(json.dumps(entry))) == (2, 41)


def test_fresh_skips_records_at_or_below_the_mark() -> None:
    items = _records(4)  # offsets 0..3
    outs, mark = fresh(None, items)
    assert len(outs) == 20 and mark == (2, 3)
    outs, mark = fresh(marked({}, (2, 1)), items)
    assert [o.request_id for o in outs] == [f"r{i}" for i in range(10, 20)] and mark == (2, 3)
    assert fresh(marked({}, (2, 3)), items) == ([], None)


def test_totals_count_each_outcome_once_across_a_replay() -> None:
    """The monitor's fold with its mark: a crash after the entry reached the changelog but before
    the input offsets were committed replays records; any prefix replayed gives the same totals."""
    items = _records(10)
    once, mark = fresh(None, items)
    expected = marked(windows.add_outcomes(None, once, "budget"), mark)
    for applied in range(0, 11):  # the changelog held the entry after `applied` records
        entry = None
        outs, m = fresh(entry, items[:applied])
        if outs:
            entry = marked(windows.add_outcomes(entry, outs, "budget"), m)
        entry = json.loads(json.dumps(entry)) if entry else None  # restored from the changelog
        for replay_from in range(0, applied + 1):  # committed offset at or before the entry's mark
            again = entry
            outs, m = fresh(again, items[replay_from:])
            if outs:
                again = marked(windows.add_outcomes(again, outs, "budget"), m)
            assert again == expected, (applied, replay_from)
            assert windows.summarise(again)["events"] == 50


def test_detectors_are_fed_each_outcome_once_across_a_replay(tmp_path) -> None:
    settings = StreamsSettings(state_dir=tmp_path)
    items = _records(12, per=50)  # 600 outcomes: the quality CUSUM learns its reference and runs
    one = TaskMonitor(settings, {}, {}, write_reports=False)
    one.on_outcomes_from("t", items)
    state_once = one.state["t"]
    assert state_once["quality"]["m"]["n"] == 600 and state_once[SRC] == [2, 11]
    store: dict = {}
    crashed = TaskMonitor(settings, store, {}, write_reports=False)
    crashed.on_outcomes_from("t", items[:7])
    restarted = TaskMonitor(settings, json.loads(json.dumps(store)), {}, write_reports=False)
    assert restarted.on_outcomes_from("t", items[3:5]).alerts == []  # all replayed: nothing fed
    restarted.on_outcomes_from("t", items[3:])
    assert restarted.state["t"] == json.loads(json.dumps(state_once))


def test_published_ids_of_both_output_formats() -> None:
    outs = [_outcome(i) for i in range(3)]
    assert outcome_ids(outs[0].to_bytes()) == ["r0"]
    batch = b"[" + b",".join(o.to_bytes() for o in outs) + b"]"
    assert batch_ids(batch) == ["r0", "r1", "r2"]
    for junk in (b"", b"not json", b"{}", b"[1, {}]", None, b'{"request_id": 3}'):
        assert outcome_ids(junk) == [] and batch_ids(junk) == []
    ids = PublishedIds()
    assert not ids.seen("a", "r0") and len(ids) == 0
    ids.add("a", ["r0", "r1"])
    ids.add("b", ["r1"])
    assert ids.seen("a", "r0") and not ids.seen("b", "r0") and ids.seen("b", "r1") and len(ids) == 3
    ids.clear()
    assert not ids.seen("a", "r0")


def _event(topic: str, partition: int, ts: float | None) -> SimpleNamespace:
    tp = (topic, partition)
    return SimpleNamespace(message=SimpleNamespace(tp=tp, timestamp=ts))


def test_the_guard_reads_back_from_the_first_record_of_each_new_partition() -> None:
    reads: list[float] = []

    class Guard(ReplayGuard):
        async def _read(self, since_s: float) -> int:
            reads.append(since_s)
            self.ids.add("out", ["r1"])
            return 1

    g = Guard("127.0.0.1:1", {"out": (1, outcome_ids)}, lookback_s=10)
    asyncio.run(g.prepare([_event("calls", 0, 1000.0), _event("calls", 0, 990.0), _event("fb", 0, 1005.0)]))
    assert reads == [990.0]  # the first record of each partition (990 is not a first one: 1000 is)
    asyncio.run(g.prepare([_event("calls", 0, 500.0), _event("fb", 1, 1200.0)]))
    assert reads == [990.0]  # a later partition with later records: covered already
    asyncio.run(g.prepare([_event("fb", 2, 900.0)]))
    assert reads == [990.0, 890.0]  # a partition whose replay starts earlier: read further back
    assert g.seen("out", "r1") and not g.seen("other", "r1") and g.suppressed == 1
    g.reset()  # a new assignment: the next records are a replay again
    assert not g.seen("out", "r1")
    asyncio.run(g.prepare([_event("calls", 0, 2000.0)]))
    assert reads == [990.0, 890.0, 1990.0]

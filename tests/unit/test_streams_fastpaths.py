"""The fast-path fence (``streams/fastpaths/``): the tested version ranges agree with
``pyproject.toml`` and the lock, each fast path checks them (and the attributes it needs) at
start-up, and with a check failing the worker runs the public-API fallback."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.sensors import Monitor

from services.contracts import OutcomeEvent
from services.contracts.settings import KafkaSettings
from streams.app import create_app
from streams.batchwrites import BatchWrites
from streams.fastpaths import FastPaths, current_event, fastdrain, support
from streams.fastpaths.lag import LagReader
from streams.fastpaths.quiet_monitor import RecordQuietMonitor
from streams.settings import StreamsSettings

ROOT = Path(__file__).resolve().parents[2]
KAFKA = KafkaSettings(bootstrap="127.0.0.1:1", topic_prefix="unit.")


def _pyproject_range(dist: str) -> tuple[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the base dependencies or an extra (faust-streaming is the streams image's)
    deps = [*project["dependencies"], *(d for ds in project["optional-dependencies"].values() for d in ds)]
    (spec,) = [d for d in deps if re.match(rf"{re.escape(dist)}\s*[<>=]", d)]
    low = re.search(r">=\s*([\w.]+)", spec).group(1)
    high = re.search(r"<\s*([\w.]+)", spec).group(1)
    return low, high


@pytest.mark.parametrize("dist", ["faust-streaming", "aiokafka"])
def test_the_tested_ranges_are_pyprojects_and_hold_the_locked_version(dist) -> None:
    assert support.TESTED[dist] == _pyproject_range(dist)
    locked = re.search(rf"^{re.escape(dist)}==([\w.]+)$", (ROOT / "requirements.lock").read_text(), re.M)
    assert locked and support.in_tested_range(dist, locked.group(1))
    assert support.in_tested_range(dist)  # and the installed one


def test_version_ranges() -> None:
    assert support.parse("0.15.3") == (0, 15, 3) and support.parse("0.16.0rc1") == (0, 16, 0)
    assert support.in_tested_range("aiokafka", "0.14.0") and support.in_tested_range("aiokafka", "0.14.9")
    assert not support.in_tested_range("aiokafka", "0.13.0") and not support.in_tested_range(
        "aiokafka", "0.15"
    )
    assert support.in_tested_range("faust-streaming", "0.15.3")
    assert not support.in_tested_range("faust-streaming", "0.15.2")
    assert not support.in_tested_range("faust-streaming", "0.16.0")
    assert not support.in_tested_range("not-a-dist", "1.0")


def test_every_fast_path_is_on_with_the_tested_versions(tmp_path) -> None:
    fast = FastPaths.detect()
    assert fast == FastPaths(outbox=True, fastdrain=True, bind=True, quiet_monitor=True, lag=True)
    app = create_app(StreamsSettings(state_dir=tmp_path, web_enabled=False), KAFKA)
    w = app.switchyard
    assert w.fast == fast and w.outbox.bulk and w.join_writes.bind is current_event.bind
    assert type(app.monitor) is RecordQuietMonitor


@pytest.fixture
def untested_versions(monkeypatch):
    """Every dependency reports a version outside the tested range."""
    monkeypatch.setattr(support, "installed", lambda dist: "99.0.0")
    yield
    monkeypatch.undo()
    FastPaths.detect()  # the real checks again (re-installs fastdrain)


def test_outside_the_tested_range_every_fast_path_falls_back_with_a_warning(
    untested_versions, tmp_path, caplog
) -> None:
    from faust.transport import consumer as fc

    with caplog.at_level("WARNING", logger="streams.fastpaths.support"):
        app = create_app(StreamsSettings(state_dir=tmp_path, web_enabled=False), KAFKA)
    w = app.switchyard
    assert w.fast == FastPaths(outbox=False, fastdrain=False, bind=False, quiet_monitor=False, lag=False)
    for name in ("outbox", "fastdrain", "bind", "quiet_monitor", "lag"):
        assert f"fast path {name} off (" in caplog.text
    assert "faust-streaming 99.0.0 is outside the tested range >=0.15.3,<0.16" in caplog.text
    assert "aiokafka 99.0.0 is outside the tested range >=0.14.0,<0.15" in caplog.text
    # the fallbacks: Faust's Monitor, Faust's loop, the public producer send, public table writes
    assert type(app.monitor) is Monitor
    assert not hasattr(fc.Consumer._drain_messages, "__wrapped__")
    assert not w.outbox.bulk and w.join_writes.bind is None
    with pytest.raises(RuntimeError):
        current_event.bind(object())


def test_a_missing_attribute_turns_its_fast_path_off(monkeypatch, caplog) -> None:
    import faust.streams

    monkeypatch.delattr(faust.streams, "_current_event")
    with caplog.at_level("WARNING"):
        assert not current_event.supported()
    assert "_current_event does not exist" in caplog.text
    monkeypatch.undo()
    assert current_event.supported()


def test_fastdrain_is_off_when_its_switch_is(tmp_path) -> None:
    from faust.transport import consumer as fc

    try:
        create_app(StreamsSettings(state_dir=tmp_path / "a", web_enabled=False, fast_drain=False), KAFKA)
        assert not hasattr(fc.Consumer._drain_messages, "__wrapped__")
        create_app(StreamsSettings(state_dir=tmp_path / "b", web_enabled=False), KAFKA)
        assert hasattr(fc.Consumer._drain_messages, "__wrapped__")
    finally:
        fastdrain.install()


def _outcome(i: int, task: str) -> OutcomeEvent:
    return OutcomeEvent(
        request_id=f"r{i}",
        task=task,
        prompt_hash="0" * 16,
        chosen_model="m",
        mode="route",
        score=1.0,
        accepted=True,
    )


async def _run_monitor(app) -> dict:
    batches = {
        "a": b"[" + b",".join(_outcome(i, "a").to_bytes() for i in range(3)) + b"]",
        "b": b"[" + _outcome(9, "b").to_bytes() + b"]",
    }
    async with app.agents["monitor"].test_context() as agent:
        for task, raw in [("a", batches["a"]), ("b", batches["b"]), ("a", batches["a"])]:
            await agent.put(raw, key=task.encode())
    return {task: agg["n"] for task, agg in app.switchyard.tables["totals"].data.items()}


async def test_the_monitor_agent_batched_with_bind(tmp_path) -> None:
    app = create_app(StreamsSettings(state_dir=tmp_path, web_enabled=False), KAFKA)
    app.finalize()
    assert app.switchyard.fast.bind
    assert await _run_monitor(app) == {"a": 6, "b": 1}


async def test_the_monitor_agent_event_by_event_without_bind(untested_versions, tmp_path) -> None:
    app = create_app(StreamsSettings(state_dir=tmp_path, web_enabled=False), KAFKA)
    app.finalize()
    assert not app.switchyard.fast.bind
    assert await _run_monitor(app) == {"a": 6, "b": 1}


class _Table:
    """What ``BatchWrites.flush`` uses of a Faust table, recording what reaches the changelog."""

    def __init__(self) -> None:
        self.data: dict = {"old": {"done": True}}
        self.changelog: list = []
        self.items: dict = {}

    def send_changelog(self, partition, key, value, key_serializer=None, value_serializer=None):
        self.changelog.append((partition, key, value))

    def __setitem__(self, key, value):  # Table.__setitem__: the store and the current event's partition
        self.data[key] = value
        self.changelog.append((current_event_of_test[-1].message.partition, key, value))

    def pop(self, key, default=None):
        value = self.data.pop(key, default)
        self.changelog.append((current_event_of_test[-1].message.partition, key, None))
        return value


current_event_of_test: list = []


@pytest.mark.parametrize("bound", [True, False], ids=["bind", "public"])
def test_batch_writes_reach_the_changelog_partition_of_their_event(bound) -> None:
    table = _Table()
    writes = BatchWrites(table, current_event_of_test.append if bound else None)
    for p, key in [(2, "r1"), (4, "r2"), (5, "r1")]:  # r1 touched again by a later event
        writes.event = SimpleNamespace(message=SimpleNamespace(partition=p))
        writes[key] = {"call": None, "p": p}
    writes.event = SimpleNamespace(message=SimpleNamespace(partition=1))
    del writes["old"]
    writes.flush()
    assert sorted(table.changelog, key=str) == sorted(
        [(5, "r1", {"call": None, "p": 5}), (4, "r2", {"call": None, "p": 4}), (1, "old", None)], key=str
    )
    assert table.data == {"r1": {"call": None, "p": 5}, "r2": {"call": None, "p": 4}}


def test_the_lag_reader_uses_the_read_offsets_or_skips(caplog) -> None:
    from aiokafka.structs import TopicPartition as TP

    tps = [TP("calls", 0), TP("calls", 1), TP("feedback", 0)]
    high = {tps[0]: 100, tps[1]: 5}

    def highwater(tp):
        if tp not in high:
            raise KeyError(tp)  # not fetched yet
        return high[tp]

    consumer = SimpleNamespace(assignment=lambda: tps, highwater=highwater, _read_offset={tps[0]: 89})
    assert LagReader(True).read(consumer) == {tps[0]: 10, tps[1]: 5}
    assert LagReader(False).read(consumer) == {}
    reader = LagReader(True)
    with caplog.at_level("WARNING"):
        assert reader.read(SimpleNamespace(assignment=lambda: tps, highwater=highwater)) == {}
    assert not reader.enabled and "fast path lag off" in caplog.text

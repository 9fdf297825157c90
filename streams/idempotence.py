"""Exactly-once application of outcomes across a crash, without Kafka transactions: pure logic.

Two sources of replayed outcomes after a ``kill -9`` and a restart (the worker is at-least-once:
its tables' changelogs run ahead of the committed input offsets):

* the **monitor** consumes its per-task batch records (``<app_id>-task-outcomes``) again from its
  last committed offset. Every per-task table entry it writes (all-time totals, the current
  window, the detectors' state) carries, in the same changelog record as the numbers, the
  ``(partition, offset)`` of the last input record folded into it (:data:`SRC`). A task's records
  all come from one partition in offset order, so a record at or below that mark is already in
  the entry and is skipped (:func:`fresh`); the mark and the numbers cannot disagree, whichever
  of the worker's changelog records reached the broker before the kill.
* the **join** processes calls and feedback again from its committed offsets and derives some
  outcomes again (those whose "joined" marker had not reached its changelog). It publishes its
  outputs first and writes its changelog only once the broker acknowledged them (a marker never
  gets ahead of its outcome: no outcome is lost), and, after every partition assignment, reads
  back the request ids it already published since the replay's first input record
  (:class:`PublishedIds`, filled by :mod:`streams.replayguard`) and does not publish those
  again, per output topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

SRC = "src"  # key of the "last input record applied" mark in a table entry: [partition, offset]

T = TypeVar("T")


def applied_upto(entry: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The ``(partition, offset)`` of the last input record folded into ``entry`` (None: unknown)."""
    if not entry:
        return None
    src = entry.get(SRC)
    if not src:
        return None
    return int(src[0]), int(src[1])


def is_applied(entry: Mapping[str, Any] | None, partition: int, offset: int) -> bool:
    """True when the input record at ``(partition, offset)`` is already folded into ``entry``.

    Offsets are only comparable within one partition: a mark from another partition (the
    topic's partitions changed) says nothing, and the record is applied."""
    mark = applied_upto(entry)
    return mark is not None and mark[0] == partition and offset <= mark[1]


def fresh(
    entry: Mapping[str, Any] | None, items: Sequence[tuple[int, int, Sequence[T]]]
) -> tuple[list[T], tuple[int, int] | None]:
    """The values of ``items`` (``(partition, offset, values)`` of input records, in offset order)
    not yet folded into ``entry``, and the ``(partition, offset)`` to mark it with once they are
    (None: nothing new)."""
    out: list[T] = []
    last: tuple[int, int] | None = None
    for partition, offset, values in items:
        if is_applied(entry, partition, offset):
            continue
        out.extend(values)
        last = (partition, offset)
    return out, last


def marked(entry: dict[str, Any], mark: tuple[int, int] | None) -> dict[str, Any]:
    """``entry`` with its mark set to ``mark`` (in place; returned for chaining)."""
    if mark is not None:
        entry[SRC] = [mark[0], mark[1]]
    return entry


# -- the join's published request ids -----------------------------------------------------------
def outcome_ids(raw: bytes | None) -> list[str]:
    """Request id of a record of ``switchyard.outcomes.v1`` (one outcome), [] when unreadable."""
    try:
        rid = json.loads(raw or b"").get("request_id")
    except (ValueError, AttributeError):
        return []
    return [rid] if isinstance(rid, str) else []


def batch_ids(raw: bytes | None) -> list[str]:
    """Request ids of a per-task batch record (a JSON array of outcomes), [] when unreadable."""
    try:
        items = json.loads(raw or b"")
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    return [i["request_id"] for i in items if isinstance(i, dict) and isinstance(i.get("request_id"), str)]


class PublishedIds:
    """Request ids already published on each output topic (read back after an assignment).

    ``seen(topic, request_id)`` is True for an outcome already on ``topic``: the join does not
    publish it there again. Empty (nothing suppressed) until filled."""

    def __init__(self) -> None:
        self._ids: dict[str, set[str]] = {}

    def add(self, topic: str, ids: Iterable[str]) -> None:
        self._ids.setdefault(topic, set()).update(ids)

    def seen(self, topic: str, request_id: str) -> bool:
        ids = self._ids.get(topic)
        return ids is not None and request_id in ids

    def clear(self) -> None:
        self._ids.clear()

    def __len__(self) -> int:
        return sum(len(v) for v in self._ids.values())

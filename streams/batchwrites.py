"""A write-back overlay on a Faust table for one batch of the join."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .join import entry_json, entry_plain, json_bytes

_DELETED = object()


class BatchWrites:
    """A write-back overlay on a table for one batch: the join reads its own writes at once, and
    each key reaches the changelog once per batch (a call and its feedback in the same batch
    cost one changelog record, not two). Set :attr:`event` to the event being processed before
    writing: a key's changelog record goes to the partition of the event that last touched it.

    ``bind`` makes an event Faust's current event (the ``bind`` fast path); without it
    :meth:`flush` writes through the table's public ``data`` and ``send_changelog``."""

    def __init__(self, table: Any, bind: Callable[[Any], None] | None = None) -> None:
        self.table = table
        self.bind = bind
        self.event: Any = None
        self._local: dict[str, Any] = {}
        self._owner: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._local:
            v = self._local[key]
            return default if v is _DELETED else v
        v = self._read(key)
        return default if v is None else v

    def _read(self, key: str) -> Any:
        # The table's store directly: ``table.get`` of a missing key costs a KeyError in Faust.
        data = getattr(self.table, "data", None)
        return data.get(key) if data is not None else self.table.get(key)

    def __getitem__(self, key: str) -> Any:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        self._local[key] = value
        self._owner[key] = self.event

    def __delitem__(self, key: str) -> None:
        self._local[key] = _DELETED
        self._owner[key] = self.event

    def keys(self) -> list[str]:
        return list({*self.table.keys(), *(k for k, v in self._local.items() if v is not _DELETED)})

    def flush(self) -> None:
        """Write the batch's changes to the table (and its changelog) through Faust."""
        for key, value in self._local.items():
            event = self._owner[key]
            if self.bind is not None:
                self.bind(event)
                if value is _DELETED:
                    self.table.pop(key, None)
                else:
                    self.table[key] = entry_plain(value)
                continue
            partition = event.message.partition  # what Table.on_key_set/on_key_del would use
            if value is _DELETED:
                if self.table.data.pop(key, None) is not None:
                    self.table.send_changelog(partition, key, None, value_serializer="raw")
            else:
                plain = entry_plain(value)
                self.table.data[key] = plain
                self.table.send_changelog(partition, key, plain)
        self._local.clear()
        self._owner.clear()

    def flush_direct(self, emit: Callable[[str, bytes, bytes | None, int], Any]) -> int:
        """Write the batch's changes to the table's store and hand its changelog records to
        ``emit(topic, key, value, partition)`` (an :class:`~streams.fastpaths.outbox.Outbox`):
        the same records (JSON key and value, a tombstone for a delete, the partition of the
        event that last touched the key) as :meth:`flush`, without Faust's per-record send
        machinery (the join writes one record per request: the worker's largest producer). The
        table must use the JSON key and value serializers and a store that needs no offset
        bookkeeping (memory)."""
        topic = self.table.changelog_topic.get_topic_name()
        data = self.table.data
        for key, value in self._local.items():
            if value is _DELETED:
                data.pop(key, None)
                raw = None
            else:
                data[key] = value
                raw = entry_json(value)
            emit(topic, json_bytes(key), raw, self._owner[key].message.partition)
        n = len(self._local)
        self._local.clear()
        self._owner.clear()
        return n

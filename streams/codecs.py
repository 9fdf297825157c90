"""Record formats of the worker's internal topics: the monitor's per-task outcome batches."""

from __future__ import annotations

import json

from pydantic import TypeAdapter, ValidationError

from services.contracts import ContractError, OutcomeEvent

from .join import json_bytes

_OUTCOME_LIST = TypeAdapter(list[OutcomeEvent])


def task_batches(encoded: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The monitor's records for a batch of encoded outcomes ``(task key, outcome JSON)``: one per
    task, a JSON array of that task's outcome records in order (what :func:`decode_outcomes` reads)."""
    by_task: dict[bytes, list[bytes]] = {}
    for key, raw in encoded:
        by_task.setdefault(key, []).append(raw)
    return [(key, b"[" + b",".join(raws) + b"]") for key, raws in by_task.items()]


def decode_outcomes(raw: bytes) -> tuple[list[OutcomeEvent], list[tuple[bytes, Exception]]]:
    """A per-task batch record (a JSON array of outcome records): the valid outcomes, in order,
    and each invalid item as (its raw JSON, the error). One pydantic call for a clean batch."""
    try:
        return _OUTCOME_LIST.validate_json(raw), []
    except ValidationError:
        pass
    try:
        items = json.loads(raw)
    except ValueError as exc:
        return [], [(raw, ContractError(f"not a JSON array of outcomes: {exc}"))]
    if not isinstance(items, list):
        return [], [(raw, ContractError("not a JSON array of outcomes"))]
    outs: list[OutcomeEvent] = []
    bad: list[tuple[bytes, Exception]] = []
    for item in items:
        try:
            outs.append(OutcomeEvent.model_validate(item))
        except ValidationError as exc:
            bad.append((json_bytes(item), ContractError(f"invalid OutcomeEvent: {exc.errors()[0]['msg']}")))
    return outs, bad

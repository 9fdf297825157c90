"""Hard-query mining: the queries the router got wrong or was unsure of (pure functions)."""

from __future__ import annotations

from services.contracts import CallEvent, HardQueryEvent, HardQueryReason, OutcomeEvent
from services.contracts.events import RoutingMode


def top2_margin(scores: dict[str, float]) -> float | None:
    """Gap between the two best router scores (None with fewer than two)."""
    if len(scores) < 2:
        return None
    a, b = sorted(scores.values(), reverse=True)[:2]
    return a - b


def mine_call(call: CallEvent, low_margin: float) -> HardQueryEvent | None:
    """An escalated call, or one whose decision was a near tie (top-2 gap below ``low_margin``;
    or the chosen model's score within ``low_margin`` of the routing threshold)."""
    reason: HardQueryReason | None = None
    if call.escalated:
        reason = HardQueryReason.ESCALATED
    else:
        margin = top2_margin(call.scores)
        chosen = call.scores.get(call.chosen_model or "")
        near_threshold = (
            call.threshold is not None and chosen is not None and abs(chosen - call.threshold) < low_margin
        )
        if (margin is not None and margin < low_margin) or near_threshold:
            reason = HardQueryReason.LOW_MARGIN
    if reason is None:
        return None
    return HardQueryEvent(
        request_id=call.request_id,
        ts=call.ts,
        task=call.task,
        prompt_hash=call.prompt_hash,
        prompt=call.prompt,
        reason=reason,
        chosen_model=call.chosen_model,
        scores=call.scores,
        router_version=call.router_version,
    )


def mine_outcome(
    outcome: OutcomeEvent, cheap_tier: str | None, scores: dict[str, float] | None = None
) -> HardQueryEvent | None:
    """Negative feedback on an answer from the cheap tier (served to a client: an exploration's
    shadow answer never was)."""
    if outcome.accepted or cheap_tier is None or outcome.tier != cheap_tier:
        return None
    if outcome.mode is RoutingMode.EXPLORE:
        return None
    return HardQueryEvent(
        request_id=outcome.request_id,
        ts=outcome.ts,
        task=outcome.task,
        prompt_hash=outcome.prompt_hash,
        prompt=outcome.prompt,
        reason=HardQueryReason.NEGATIVE_FEEDBACK,
        chosen_model=outcome.chosen_model,
        scores=scores or {},
        feedback_score=outcome.score,
        router_version=outcome.router_version,
    )

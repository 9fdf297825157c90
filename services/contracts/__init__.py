"""Contracts shared by every part of Switchyard: events, topics, settings, API shapes.

Depends on nothing heavy (no ray, torch, faust): streams/ and training/ import it freely.
"""

from .events import (
    SCHEMA_VERSION,
    AlertEvent,
    AlertStatus,
    Attempt,
    CallEvent,
    CallStatus,
    ContractError,
    DeadLetter,
    Event,
    FeedbackEvent,
    FeedbackSource,
    HardQueryEvent,
    HardQueryReason,
    OutcomeEvent,
    RetrainRequest,
    RoutingMode,
    Usage,
    prompt_hash,
)
from .topics import TOPICS, TopicSpec, decode, json_schemas, topic_name

__all__ = [
    "SCHEMA_VERSION",
    "TOPICS",
    "AlertEvent",
    "AlertStatus",
    "Attempt",
    "CallEvent",
    "CallStatus",
    "ContractError",
    "DeadLetter",
    "Event",
    "FeedbackEvent",
    "FeedbackSource",
    "HardQueryEvent",
    "HardQueryReason",
    "OutcomeEvent",
    "RetrainRequest",
    "RoutingMode",
    "TopicSpec",
    "Usage",
    "decode",
    "json_schemas",
    "prompt_hash",
    "topic_name",
]

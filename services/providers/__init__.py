"""Upstream clients: OpenAI-compatible and Anthropic Messages adapters on pooled httpx clients,
with retries, circuit breakers and fallbacks (:class:`ProviderPool`)."""

from .arbitrage import ArbitragePolicy
from .base import Completion, StreamUsage, Timeouts
from .breaker import BreakerState, CircuitBreaker
from .pool import BreakerPolicy, MidStreamError, ProviderPool, RetryPolicy, StreamHandle

__all__ = [
    "ArbitragePolicy",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "Completion",
    "MidStreamError",
    "ProviderPool",
    "RetryPolicy",
    "StreamHandle",
    "StreamUsage",
    "Timeouts",
]

"""Agent ``oncall``: alerts from ``switchyard.alerts.v1`` to the on-call webhook, each once;
informational notices (severity ``info``: savings opportunities) stay on the topic and never page."""

from __future__ import annotations

import logging

import faust

from services.contracts import AlertEvent, ContractError

from ..alerts import WebhookError
from ..wiring import Wiring

log = logging.getLogger(__name__)


def register(app: faust.App, w: Wiring) -> None:
    """Add the ``oncall`` agent to ``app``."""
    metrics, delivery = w.metrics, w.delivery
    assert delivery is not None

    @app.agent(w.topics["alerts"], name="oncall")
    async def oncall_agent(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            metrics.consumed(ev.message.topic)
            try:
                alert = AlertEvent.from_bytes(ev.value)
            except ContractError as exc:
                await w.dead_letter(ev, exc, "oncall")
                continue
            if delivery.seen(alert):
                continue
            if alert.severity == "info":  # a notice (a savings opportunity): on the topic, never paged
                metrics.notices.labels(detector=alert.detector, status=alert.status.value).inc()
                delivery.mark(alert)
                continue
            if w.notifier is not None:
                try:
                    await w.notifier.send(alert)
                    metrics.webhook_sent.inc()
                except WebhookError as exc:
                    metrics.webhook_failures.inc()
                    log.error("%s", exc)
            delivery.mark(alert)

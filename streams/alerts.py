"""Alerts: de-duplicated firing/resolved records and their delivery to on-call.

* :class:`AlertTracker` turns detector changes into :class:`AlertEvent` records, one firing per
  episode and one resolve, keyed by a stable fingerprint of (task, detector, subject).
* :func:`alertmanager_payload` / :func:`pagerduty_payload` shape an alert for Alertmanager's
  API v2 (``postableAlerts``) or PagerDuty Events v2.
* :class:`WebhookNotifier` posts with retries and backoff (tenacity); it never logs the
  PagerDuty routing key.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from services.contracts import AlertEvent, AlertStatus

log = logging.getLogger(__name__)

SUGGESTED_ACTIONS = {
    "quality": "Route this task's traffic away from the degraded model (raise its threshold or pin a "
    "stronger tier) and retrain the router on the mined hard queries.",
    "calibration": "Recalibrate the router's thresholds for this task on recent outcomes; "
    "retrain if it persists.",
    "input_drift": "Inspect the drift report; the task's traffic changed — "
    "retrain the router on recent data.",
}


def fingerprint(task: str, detector: str, subject: str | None = None) -> str:
    """Stable id of an alert series: the same (task, detector, subject) always maps to it."""
    raw = "\x1f".join([task, detector, subject or ""])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


class AlertTracker:
    """Which alerts are firing (kept in ``store``: a dict or a changelog-backed table).

    :meth:`fire` returns an event only when the alert was not firing; :meth:`resolve` only when
    it was. So a detector may report the same condition many times: on-call hears it once.
    """

    def __init__(self, store: MutableMapping[str, Any]) -> None:
        self.store = store

    def is_firing(self, alert_id: str) -> bool:
        entry = self.store.get(alert_id)
        return bool(entry and entry.get("status") == AlertStatus.FIRING.value)

    def fire(
        self,
        task: str,
        detector: str,
        summary: str,
        evidence: dict[str, Any],
        *,
        subject: str | None = None,
        severity: Literal["info", "warning", "critical"] = "warning",
        window_start: datetime | None = None,
        window_end: datetime | None = None,
        report_url: str | None = None,
        now: datetime | None = None,
    ) -> AlertEvent | None:
        """A firing alert, or None when this fingerprint is already firing."""
        alert_id = fingerprint(task, detector, subject)
        if self.is_firing(alert_id):
            return None
        now = now or datetime.now(UTC)
        self.store[alert_id] = {
            "status": AlertStatus.FIRING.value,
            "since": now.isoformat(),
            "task": task,
            "detector": detector,
            "subject": subject,
            "severity": severity,
        }
        return AlertEvent(
            alert_id=alert_id,
            status=AlertStatus.FIRING,
            ts=now,
            task=task,
            detector=detector,
            severity=severity,
            summary=summary,
            evidence={"subject": subject, **evidence},
            window_start=window_start,
            window_end=window_end,
            suggested_action=SUGGESTED_ACTIONS.get(detector),
            report_url=report_url,
        )

    def resolve(
        self,
        task: str,
        detector: str,
        summary: str,
        evidence: dict[str, Any],
        *,
        subject: str | None = None,
        now: datetime | None = None,
    ) -> AlertEvent | None:
        """A resolved alert, or None when this fingerprint is not firing."""
        alert_id = fingerprint(task, detector, subject)
        entry = self.store.get(alert_id)
        if not entry or entry.get("status") != AlertStatus.FIRING.value:
            return None
        now = now or datetime.now(UTC)
        self.store[alert_id] = {**entry, "status": AlertStatus.RESOLVED.value, "resolved": now.isoformat()}
        return AlertEvent(
            alert_id=alert_id,
            status=AlertStatus.RESOLVED,
            ts=now,
            task=task,
            detector=detector,
            severity=entry.get("severity", "warning"),
            summary=summary,
            evidence={"subject": subject, **evidence},
            window_start=datetime.fromisoformat(entry["since"]),
            window_end=now,
        )


class DeliveryLog:
    """Which (alert, status, time) deliveries already went out: a redelivered record is skipped."""

    def __init__(self, store: MutableMapping[str, Any]) -> None:
        self.store = store

    @staticmethod
    def key(alert: AlertEvent) -> str:
        return f"{alert.alert_id}:{alert.status.value}:{alert.ts.isoformat()}"

    def seen(self, alert: AlertEvent) -> bool:
        return self.store.get(alert.alert_id) == self.key(alert)

    def mark(self, alert: AlertEvent) -> None:
        self.store[alert.alert_id] = self.key(alert)


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts else None


def alertmanager_payload(alert: AlertEvent, generator_url: str | None = None) -> list[dict[str, Any]]:
    """Alertmanager API v2 ``postableAlerts``: a list with one alert; a resolve sets ``endsAt``."""
    labels = {
        "alertname": f"SwitchyardDrift_{alert.detector}",
        "task": alert.task,
        "detector": alert.detector,
        "severity": alert.severity,
        "fingerprint": alert.alert_id,
        "service": "switchyard",
    }
    subject = alert.evidence.get("subject")
    if subject:
        labels["subject"] = str(subject)
    annotations = {"summary": alert.summary}
    if alert.suggested_action:
        annotations["suggested_action"] = alert.suggested_action
    if alert.report_url:
        annotations["report_url"] = alert.report_url
    annotations["evidence"] = _short(alert.evidence)
    starts = alert.window_start if alert.status is AlertStatus.RESOLVED and alert.window_start else alert.ts
    item: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": _iso(starts)}
    if alert.status is AlertStatus.RESOLVED:
        item["endsAt"] = _iso(alert.ts)
    if generator_url or alert.report_url:
        item["generatorURL"] = generator_url or alert.report_url
    return [item]


def pagerduty_payload(alert: AlertEvent, routing_key: SecretStr) -> dict[str, Any]:
    """PagerDuty Events API v2 body: trigger or resolve, de-duplicated by the alert fingerprint."""
    body: dict[str, Any] = {
        "routing_key": routing_key.get_secret_value(),
        "event_action": "trigger" if alert.status is AlertStatus.FIRING else "resolve",
        "dedup_key": alert.alert_id,
    }
    if alert.status is AlertStatus.FIRING:
        body["payload"] = {
            "summary": alert.summary[:1024],
            "source": "switchyard-streams",
            "severity": alert.severity,
            "component": alert.task,
            "class": alert.detector,
            "custom_details": {"evidence": alert.evidence, "suggested_action": alert.suggested_action},
        }
        if alert.report_url:
            body["links"] = [{"href": alert.report_url, "text": "drift report"}]
    return body


def _short(evidence: dict[str, Any], limit: int = 1000) -> str:
    import json

    text = json.dumps(evidence, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WebhookError(RuntimeError):
    """The on-call webhook kept failing after every retry."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class WebhookNotifier:
    """POST alerts to on-call (Alertmanager JSON or PagerDuty Events v2) with retry and backoff."""

    def __init__(
        self,
        url: str,
        kind: Literal["alertmanager", "pagerduty"] = "alertmanager",
        *,
        routing_key: SecretStr | None = None,
        timeout_s: float = 5.0,
        attempts: int = 5,
        max_wait_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if kind == "pagerduty" and routing_key is None:
            raise ValueError("PagerDuty needs SWITCHYARD_STREAMS_PAGERDUTY_ROUTING_KEY")
        self.url = url
        self.kind = kind
        self._routing_key = routing_key
        self._attempts = attempts
        self._max_wait_s = max_wait_s
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self.sent = 0

    def body(self, alert: AlertEvent) -> Any:
        if self.kind == "pagerduty":
            assert self._routing_key is not None
            return pagerduty_payload(alert, self._routing_key)
        return alertmanager_payload(alert)

    async def send(self, alert: AlertEvent) -> None:
        """Deliver one alert; raise :class:`WebhookError` after the last failed attempt."""
        body = self.body(alert)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential_jitter(initial=0.2, max=self._max_wait_s),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    resp = await self._client.post(self.url, json=body)
                    resp.raise_for_status()
        except (httpx.HTTPError, httpx.TransportError) as exc:
            # The URL is configuration; the body (which may carry a routing key) is never logged.
            raise WebhookError(
                f"{self.kind} webhook failed for alert {alert.alert_id}: {type(exc).__name__}: "
                f"{_status_of(exc)}"
            ) from None
        self.sent += 1
        log.info(
            "delivered %s alert %s (task=%s detector=%s) to %s",
            alert.status.value,
            alert.alert_id,
            alert.task,
            alert.detector,
            self.kind,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return "transport error"

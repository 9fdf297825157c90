"""Alert de-duplication, payload shapes and webhook retries (httpx MockTransport, no network)."""

from __future__ import annotations

import logging

import httpx
import pytest
from pydantic import SecretStr

from services.contracts import AlertStatus
from streams.alerts import (
    AlertTracker,
    DeliveryLog,
    WebhookError,
    WebhookNotifier,
    alertmanager_payload,
    fingerprint,
    pagerduty_payload,
)


def test_fingerprint_is_stable_and_distinct() -> None:
    assert fingerprint("t", "quality", "m") == fingerprint("t", "quality", "m")
    assert (
        len(
            {
                fingerprint("t", "quality", "m"),
                fingerprint("t", "quality", "n"),
                fingerprint("u", "quality", "m"),
                fingerprint("t", "calibration", "m"),
            }
        )
        == 4
    )


def test_tracker_fires_once_per_episode_and_resolves_once() -> None:
    tr = AlertTracker({})
    first = tr.fire("t", "quality", "drop", {"x": 1}, subject="m", severity="critical")
    assert first is not None and first.status is AlertStatus.FIRING
    assert tr.fire("t", "quality", "drop again", {}, subject="m") is None
    assert tr.resolve("t", "quality", "ok", {}, subject="other") is None
    resolved = tr.resolve("t", "quality", "ok", {}, subject="m")
    assert resolved is not None and resolved.alert_id == first.alert_id
    assert resolved.window_start == first.ts and resolved.severity == "critical"
    assert tr.resolve("t", "quality", "ok", {}, subject="m") is None
    again = tr.fire("t", "quality", "drop", {}, subject="m")
    assert again is not None and again.alert_id == first.alert_id


def test_delivery_log_skips_redelivered_records() -> None:
    tr, log = AlertTracker({}), DeliveryLog({})
    alert = tr.fire("t", "quality", "drop", {})
    assert not log.seen(alert)
    log.mark(alert)
    assert log.seen(alert)
    assert not log.seen(tr.resolve("t", "quality", "ok", {}))


def test_alertmanager_payload_shape() -> None:
    tr = AlertTracker({})
    firing = tr.fire("mmlu", "quality", "drop", {"observed": 0.5}, subject="m", report_url="file:///r.html")
    [item] = alertmanager_payload(firing)
    assert item["labels"]["alertname"] == "SwitchyardDrift_quality"
    assert item["labels"]["task"] == "mmlu" and item["labels"]["fingerprint"] == firing.alert_id
    assert item["annotations"]["report_url"] == "file:///r.html"
    assert item["startsAt"].endswith("Z") and "endsAt" not in item
    [res] = alertmanager_payload(tr.resolve("mmlu", "quality", "ok", {}, subject="m"))
    assert res["endsAt"].endswith("Z") and res["startsAt"] == item["startsAt"]
    assert res["labels"] == item["labels"]


def test_pagerduty_payload_trigger_and_resolve() -> None:
    tr = AlertTracker({})
    key = SecretStr("R0UTINGKEY")
    trig = pagerduty_payload(tr.fire("t", "calibration", "gap", {}), key)
    assert trig["event_action"] == "trigger" and trig["routing_key"] == "R0UTINGKEY"
    assert trig["payload"]["severity"] == "warning" and trig["dedup_key"]
    res = pagerduty_payload(tr.resolve("t", "calibration", "ok", {}), key)
    assert res["event_action"] == "resolve" and res["dedup_key"] == trig["dedup_key"]


async def test_webhook_retries_then_delivers() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503 if len(calls) < 3 else 200)

    n = WebhookNotifier(
        "http://oncall.test/api/v2/alerts",
        client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        max_wait_s=0.01,
    )
    await n.send(AlertTracker({}).fire("t", "quality", "drop", {}))
    assert len(calls) == 3 and n.sent == 1
    assert isinstance(__import__("json").loads(calls[-1].content), list)


async def test_webhook_gives_up_without_leaking_the_routing_key(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500, text="boom")

    n = WebhookNotifier(
        "http://pd.test/v2/enqueue",
        "pagerduty",
        routing_key=SecretStr("SUPERSECRETKEY"),
        client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        attempts=3,
        max_wait_s=0.01,
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WebhookError) as err:
        await n.send(AlertTracker({}).fire("t", "quality", "drop", {}))
    assert len(calls) == 3
    assert "SUPERSECRETKEY" not in str(err.value) and "SUPERSECRETKEY" not in caplog.text
    assert "HTTP 500" in str(err.value)


async def test_webhook_does_not_retry_a_client_error() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400)

    n = WebhookNotifier(
        "http://oncall.test/", client=httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(WebhookError):
        await n.send(AlertTracker({}).fire("t", "quality", "drop", {}))
    assert len(calls) == 1


def test_pagerduty_needs_a_routing_key() -> None:
    with pytest.raises(ValueError, match="ROUTING_KEY"):
        WebhookNotifier("http://pd.test/", "pagerduty")

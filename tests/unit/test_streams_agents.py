"""Faust agents with ``agent.test_context()`` (no broker: the bootstrap points nowhere)."""

from __future__ import annotations

import json

import httpx

from services.contracts.settings import KafkaSettings
from streams.alerts import AlertTracker
from streams.app import create_app
from streams.settings import StreamsSettings


async def test_oncall_agent_delivers_each_alert_once(tmp_path) -> None:
    settings = StreamsSettings(
        state_dir=tmp_path, web_enabled=False, webhook_url="http://oncall.test/api/v2/alerts"
    )
    app = create_app(settings, KafkaSettings(bootstrap="127.0.0.1:1", topic_prefix="unit."))
    app.finalize()
    bodies: list = []

    def receive(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200)

    app.switchyard.notifier._client = httpx.AsyncClient(transport=httpx.MockTransport(receive))
    tracker = AlertTracker({})
    firing = tracker.fire("gsm8k", "quality", "acceptance dropped", {"observed": 0.5}, subject="m")
    resolved = tracker.resolve("gsm8k", "quality", "back to normal", {}, subject="m")
    async with app.agents["oncall"].test_context() as agent:
        await agent.put(firing.to_bytes())
        await agent.put(firing.to_bytes())  # redelivered record: not paged again
        await agent.put(resolved.to_bytes())
    assert [b[0]["labels"]["fingerprint"] for b in bodies] == [firing.alert_id, firing.alert_id]
    assert "endsAt" not in bodies[0][0] and bodies[1][0]["endsAt"]
    assert app.switchyard.tables["deliveries"][firing.alert_id].startswith(f"{firing.alert_id}:resolved:")

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
    notice = tracker.fire("world_religions", "opportunity", "savings opportunity", {}, severity="info")
    async with app.agents["oncall"].test_context() as agent:
        await agent.put(notice.to_bytes())
    assert len(bodies) == 2, "an informational notice must never page on-call"
    notices = app.switchyard.metrics.notices.labels(detector="opportunity", status="firing")
    assert notices._value.get() == 1


async def test_an_input_drift_alert_fires_and_resolves_across_a_worker_restart(tmp_path) -> None:
    import asyncio

    import numpy as np
    from faust.serializers import codecs

    from services.contracts import AlertEvent, AlertStatus
    from streams.drift import FEATURE_COLUMNS
    from streams.settings import InputDriftConfig

    settings = StreamsSettings(
        state_dir=tmp_path,
        web_enabled=False,
        input_drift=InputDriftConfig(reference_size=100, current_size=100, check_every=100),
    )
    rng = np.random.default_rng(0)

    def features(shift: float) -> dict:  # one join batch of 100 calls, by column
        return {
            "n": 100,
            "columns": {c: [float(v) for v in rng.normal(shift, 1, 100)] for c in FEATURE_COLUMNS},
        }

    def worker(recovered: dict | None = None):
        app = create_app(settings, KafkaSettings(bootstrap="127.0.0.1:1", topic_prefix="unit."))
        app.finalize()
        for name, data in (recovered or {}).items():  # what Faust restores from the changelogs
            app.switchyard.tables[name].data.update(data)
        alerts: list[AlertEvent] = []

        async def to_alerts(key=None, value=None, **kw):
            alerts.append(AlertEvent.from_bytes(value))

        async def to_retrain(key=None, value=None, **kw):
            return None

        app.switchyard.topics["alerts"].send = to_alerts
        app.switchyard.topics["retrain"].send = to_retrain
        return app, alerts

    async def feed(app, alerts: list, *batches: dict) -> None:
        async with app.agents["input-drift"].test_context() as agent:
            for batch in batches:
                await agent.put(batch, key="t")
            for _ in range(1200):  # the check runs in a thread (evidently's first import is slow)
                if alerts:
                    break
                await asyncio.sleep(0.05)

    app, alerts = worker()
    await feed(app, alerts, features(0.0), features(3.0))  # reference, then changed traffic
    assert [(a.status, a.detector) for a in alerts] == [(AlertStatus.FIRING, "input_drift")]
    changelogs = {
        name: {
            k: codecs.loads("json", codecs.dumps("json", v))
            for k, v in app.switchyard.tables[name].data.items()
        }
        for name in ("input_drift", "alerts", "detectors")
    }
    assert changelogs["input_drift"]["t"]["firing"] is True

    app, resolved = worker(changelogs)  # a new worker on the same tables: the monitor is rebuilt
    await feed(app, resolved, features(0.0))  # traffic is back to normal
    assert [(a.status, a.alert_id) for a in resolved] == [(AlertStatus.RESOLVED, alerts[0].alert_id)]
    assert app.switchyard.monitor.firing() == []

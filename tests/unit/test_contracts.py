"""Event contracts: every event round-trips through JSON; broken records fail clearly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.contracts import (
    TOPICS,
    AlertEvent,
    Attempt,
    CallEvent,
    ContractError,
    DeadLetter,
    FeedbackEvent,
    HardQueryEvent,
    OutcomeEvent,
    RetrainRequest,
    decode,
    json_schemas,
    prompt_hash,
)

H = prompt_hash("What is 2+2?")
SAMPLES = {
    "switchyard.calls.v1": CallEvent(
        request_id="r1",
        task="gsm8k",
        prompt_hash=H,
        prompt="What is 2+2?",
        requested_model="switchyard/auto",
        mode="cascade",
        router_version="3",
        scores={"gpt-4-1106-preview": 0.9, "mistralai/Mixtral-8x7B-Instruct-v0.1": 0.6},
        chosen_model="gpt-4-1106-preview",
        attempts=[
            Attempt(
                model="mistralai/Mixtral-8x7B-Instruct-v0.1",
                provider="p",
                status="rejected",
                cost_usd=0.0001,
                accepted_score=0.2,
            ),
            Attempt(model="gpt-4-1106-preview", provider="p", status="ok", cost_usd=0.01),
        ],
        escalated=True,
        cost_usd=0.0101,
        latency_ms=812.5,
    ),
    "switchyard.feedback.v1": FeedbackEvent(request_id="r1", score=0.0, source="judge"),
    "switchyard.outcomes.v1": OutcomeEvent(
        request_id="r1", task="gsm8k", prompt_hash=H, chosen_model="m", mode="route", score=1.0, accepted=True
    ),
    "switchyard.alerts.v1": AlertEvent(
        alert_id="gsm8k/quality",
        status="firing",
        task="gsm8k",
        detector="page_hinkley",
        summary="acceptance dropped",
        evidence={"mean": 0.61, "reference": 0.78},
    ),
    "switchyard.hard-queries.v1": HardQueryEvent(
        request_id="r1", task="gsm8k", prompt_hash=H, reason="escalated"
    ),
    "switchyard.retrain.v1": RetrainRequest(reason="drift on gsm8k", source="streams", tasks=["gsm8k"]),
    "switchyard.deadletter.v1": DeadLetter(
        source_topic="switchyard.calls.v1", value="{", error="bad json", consumer="streams"
    ),
}


def test_every_topic_has_a_sample() -> None:
    assert set(SAMPLES) == {t.name for t in TOPICS}


@pytest.mark.parametrize("topic", sorted(SAMPLES))
def test_round_trip(topic: str) -> None:
    event = SAMPLES[topic]
    raw = event.to_bytes()
    back = decode(topic, raw)
    assert back == event
    assert json.loads(raw)["schema_version"] == 1


@pytest.mark.parametrize("topic", sorted(SAMPLES))
def test_unknown_schema_version_is_rejected(topic: str) -> None:
    doc = json.loads(SAMPLES[topic].to_bytes())
    doc["schema_version"] = 2
    with pytest.raises(ContractError, match="schema_version"):
        decode(topic, json.dumps(doc))


def test_malformed_record_names_the_problem() -> None:
    with pytest.raises(ContractError, match=r"invalid CallEvent: .*request_id: Field required"):
        decode("switchyard.calls.v1", b'{"schema_version": 1, "prompt_hash": "x"}')
    with pytest.raises(ContractError, match="invalid FeedbackEvent"):
        decode("switchyard.feedback.v1", b"not json at all")
    with pytest.raises(ContractError, match="unknown topic"):
        decode("nope.v1", b"{}")


def test_field_constraints() -> None:
    with pytest.raises(ContractError, match=r"score \(0..1\) or a label"):
        FeedbackEvent.from_bytes(json.dumps({"request_id": "r"}))
    with pytest.raises(ContractError, match="less than or equal to 1"):
        FeedbackEvent.from_bytes(json.dumps({"request_id": "r", "score": 1.5}))
    doc = json.loads(SAMPLES["switchyard.calls.v1"].to_bytes())
    doc["surprise"] = 1
    with pytest.raises(ContractError, match="surprise"):
        CallEvent.from_bytes(json.dumps(doc))
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="window_start"):
        RetrainRequest(reason="x", window_start=now, window_end=now - timedelta(hours=1))


def test_feedback_value_from_label() -> None:
    assert FeedbackEvent(request_id="r", label="good").value == 1.0
    assert FeedbackEvent(request_id="r", label="bad").value == 0.0
    assert FeedbackEvent(request_id="r", score=0.25).value == 0.25


def test_json_schemas_export_every_topic() -> None:
    schemas = json_schemas()
    assert set(schemas) == {t.name for t in TOPICS}
    calls = schemas["switchyard.calls.v1"]
    assert {"request_id", "prompt_hash", "mode", "schema_version"} <= set(calls["properties"])
    assert "request_id" in calls["required"]


def test_prompt_hash_is_stable_and_not_the_prompt() -> None:
    assert prompt_hash("abc") == prompt_hash("abc") != prompt_hash("abd")
    keyed = prompt_hash("abc", b"key-1")
    assert keyed == prompt_hash("abc", b"key-1") != prompt_hash("abc", b"key-2") != prompt_hash("abc")
    assert "abc" not in prompt_hash("abc")


def test_kafka_security_settings_become_client_options(tmp_path, monkeypatch) -> None:
    from pydantic import ValidationError

    from services.contracts.settings import KafkaSettings

    plain = KafkaSettings(bootstrap="b:9092")
    assert plain.client_options() == {} and plain.faust_credentials() is None
    # the clients of a TLS + SCRAM listener (what k8s/ runs): every aiokafka client gets the same
    # options, Faust its credentials; the password never shows in the settings' repr
    ca = tmp_path / "ca.crt"
    ca.write_text("")  # the context is built by aiokafka's helper, stubbed here
    monkeypatch.setattr("aiokafka.helpers.create_ssl_context", lambda cafile=None: ("ctx", cafile))
    s = KafkaSettings(
        bootstrap="b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="switchyard-gateway",
        sasl_password="s3cret",
        ssl_cafile=ca,
    )
    opts = s.client_options()
    assert opts == {
        "security_protocol": "SASL_SSL",
        "ssl_context": ("ctx", str(ca)),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "switchyard-gateway",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()
    creds = s.faust_credentials()
    assert creds.username == "switchyard-gateway" and creds.mechanism.value == "SCRAM-SHA-512"
    with pytest.raises(ValidationError, match="SASL_USERNAME"):
        KafkaSettings(bootstrap="b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")

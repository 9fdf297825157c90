"""The gateway on the real stack: Ray Serve (one app for the module), the emulator subprocess,
real Kafka, the official openai client; streams, policies, fallbacks on every emulator fault,
the breaker, error paths, events in Kafka, and the pull-based hot swap under load: the replicas
follow a router alias in the real MLflow registry, and a corrupt version is never served."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
from gateway_stack import consume_all, emulator_catalog, listening_sockets, make_router

from services.catalog import load_catalog
from services.contracts.events import CallEvent, FeedbackEvent
from services.contracts.topics import CALLS, FEEDBACK
from training.data import GPT4, MIXTRAL, load_gsm8k

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

KEY = "sk-integration-1"
STRONG, WEAK = GPT4, MIXTRAL
SENT: list[str] = []  # request ids of every call the gateway answered or failed (for the Kafka check)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(data_dir):
    from infra.emulator.testing import run_emulator

    with run_emulator(data_dir=data_dir, chunk_words=4) as emu:
        yield emu


@pytest.fixture(scope="module")
def routers(data_dir) -> dict[str, Path]:
    root = Path(__file__).resolve().parents[2] / ".state" / "gateway-test"
    return {
        "a": make_router("mlp", root / "router-mlp"),
        "b": make_router("knn", root / "router-knn"),
        "static": make_router("mlp", root / "router-mlp-static", backend="static"),
    }


@pytest.fixture(scope="module")
def registry(routers, mlflow_uri, tmp_path_factory) -> dict:
    """The test routers registered in the real MLflow (a model of its own): a (champion at start),
    b, static, and a corrupt copy of a (a weight byte-range zeroed: fails its content hash)."""
    import shutil
    import uuid

    from services.contracts.settings import MLflowSettings
    from services.router.artifact import load_local
    from training.registry import log_run, promote

    ms = MLflowSettings(
        tracking_uri=mlflow_uri,
        registered_model=f"switchyard-gw-test-{uuid.uuid4().hex[:8]}",
        experiment="switchyard-gateway-tests",
    )
    bad = tmp_path_factory.mktemp("corrupt") / "router"
    shutil.copytree(routers["a"], bad)
    head = bad / "head.safetensors"
    raw = bytearray(head.read_bytes())
    raw[-64:] = b"\x00" * 64
    head.write_bytes(bytes(raw))
    versions = {}
    for key, path in [("a", routers["a"]), ("b", routers["b"]), ("static", routers["static"]), ("bad", bad)]:
        manifest = load_local(routers["a"] if key == "bad" else path).manifest
        reg = log_run(ms, path, manifest, {"gate": {"passed": True, "reasons": "test"}}, {}, register=True)
        versions[key] = reg.version
    promote(ms, version=versions["a"])
    return {"ms": ms, "versions": versions, "ref": f"models:/{ms.registered_model}@champion"}


@pytest.fixture(scope="module")
def prefix() -> str:
    import uuid

    return f"gw{uuid.uuid4().hex[:8]}."


@pytest.fixture(scope="module")
def gateway(emulator, registry, kafka_bootstrap, prefix, tmp_path_factory):
    """ONE Serve app for the whole module; Ray is shut down at the end."""
    import ray
    from ray import serve

    from services.contracts.topic_admin import apply_topics
    from services.gateway.deployments import GatewayArgs
    from services.gateway.local import deploy, start_ray

    asyncio.run(apply_topics(kafka_bootstrap, prefix, specs=(CALLS, FEEDBACK), max_replication=1))
    tmp = tmp_path_factory.mktemp("gateway")
    args = GatewayArgs(
        router_ref=registry["ref"],  # the replicas follow this alias
        catalog_path=emulator_catalog(tmp, emulator.base_url),
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=prefix,
        spool_dir=tmp / "spool",
        settings={
            "api_keys": [KEY],
            "max_body_bytes": 200_000,
            # a short window, so the breaker tests judge their own calls, not the earlier tests'
            "breaker_min_calls": 3,
            "breaker_failure_rate": 0.5,
            "breaker_window_s": 1.0,
            "breaker_half_open_probes": 1,
            "breaker_reset_s": 2.0,
            "retry_initial_s": 0.02,
            "retry_max_s": 0.1,
            "router_timeout_s": 10.0,
            "router_poll_s": 0.5,
            "explore_enabled": False,  # exploration has its own tests; here one event per call
        },
    )
    start_ray(args.gateway_settings(), num_cpus=2)
    port = _free_port()
    url = deploy(args, host="127.0.0.1", port=port, wait_ready_s=300)
    yield {"url": url, "args": args, "emulator": emulator}
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(autouse=True)
def _reset(request):
    if "gateway" in request.fixturenames:
        request.getfixturevalue("gateway")["emulator"].reset()
    yield


@pytest.fixture(scope="module")
def gsm8k(data_dir):
    return load_gsm8k(data_dir).frame


def ask(client, prompt: str, model: str = "switchyard/auto", **kw):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **kw
    )
    SENT.append(raw.headers["x-switchyard-request-id"])
    return raw, raw.parse()


def metrics(gateway) -> str:
    return httpx.get(gateway["url"] + "/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=10).text


def test_openai_client_non_stream_routes_and_reports_cost(client, gsm8k) -> None:
    prompt = gsm8k.iloc[3]["prompt"]
    knobs = {"task": "gsm8k", "quality_target": 0.9, "mode": "route"}  # gsm8k's catalog default is cascade
    raw, resp = ask(client, prompt, extra_body={"switchyard": knobs})
    catalog_ids = set(load_catalog().model_ids)
    assert resp.model in catalog_ids
    assert resp.choices[0].message.content
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert raw.headers["x-switchyard-route"] == "route"
    assert raw.headers["x-switchyard-route-source"] == "router"
    assert float(raw.headers["x-switchyard-cost-usd"]) > 0
    assert raw.headers["x-switchyard-router-version"].startswith("mlp-")
    # without a mode, gsm8k takes its catalog default: a cascade from the cheapest candidate
    raw, resp = ask(client, prompt, extra_body={"switchyard": {"task": "gsm8k"}})
    assert raw.headers["x-switchyard-route"] == "cascade" and resp.model in catalog_ids


def test_openai_client_stream(client, gsm8k) -> None:
    prompt = gsm8k.iloc[5]["prompt"]
    with client.chat.completions.with_streaming_response.create(
        model="switchyard/auto",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"switchyard": {"task": "gsm8k"}},
    ) as raw:
        SENT.append(raw.headers["x-switchyard-request-id"])
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) > 20
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_passthrough_and_models_list(client) -> None:
    raw, resp = ask(client, "What is the capital of France?", model="claude-v2")
    assert resp.model == "claude-v2" and raw.headers["x-switchyard-route"] == "passthrough"
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "switchyard/auto" and STRONG in ids


def test_error_paths(gateway, client) -> None:
    with pytest.raises(openai.AuthenticationError) as e401:
        openai.OpenAI(base_url=gateway["url"] + "/v1", api_key="wrong", max_retries=0).models.list()
    assert e401.value.status_code == 401 and e401.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as e400:
        ask(client, "hi", model="gpt-7")
    assert e400.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:  # a parameter of the wrong shape: 400, as OpenAI
        client.chat.completions.create(model="switchyard/auto", messages=[])
    assert bad.value.body["code"] == "validation_error" and bad.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(
            model="switchyard/auto", messages=[{"role": "user", "content": "hi"}], temperature="hot"
        )
    assert hot.value.body["param"] == "temperature"
    with pytest.raises(openai.APIStatusError) as e413:
        ask(client, "x" * 300_000)
    assert e413.value.status_code == 413 and e413.value.body["code"] == "request_too_large"
    r = httpx.post(
        gateway["url"] + "/v1/chat/completions",
        content=b"{oops",
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("model", "fault"),
    [
        ("mistralai/mistral-7b-chat", {"error_rate": 1.0, "error_statuses": [503]}),
        ("WizardLM/WizardLM-13B-V1.2", {"malformed_rate": 1.0}),
        ("zero-one-ai/Yi-34B-Chat", {"hang_rate": 1.0, "hang_s": 20}),
        ("claude-instant-v1", {"error_rate": 1.0, "error_statuses": [529]}),
    ],
    ids=["5xx", "malformed", "hang", "anthropic-overloaded"],
)
def test_fallback_on_fault(gateway, client, model, fault) -> None:
    """Each fault on a model (its own breaker) falls back to its catalog chain."""
    gateway["emulator"].set_faults(model, **fault)
    raw, resp = ask(client, "What is 7 * 6?", model=model)
    assert resp.model == load_catalog().model(model).fallbacks[0]
    assert resp.choices[0].message.content


def test_429_is_retried_after_retry_after(gateway, client) -> None:
    gateway["emulator"].set_faults(WEAK, rate_limit_rate=1.0, retry_after_s=0.5, max_faults=1)
    t0 = time.perf_counter()
    raw, resp = ask(client, "What is 7 * 6?", model=WEAK)
    assert resp.model == WEAK and time.perf_counter() - t0 >= 0.5


def test_stream_cut_before_first_token_falls_back_silently(gateway, client) -> None:
    gateway["emulator"].set_faults(WEAK, stream_cut_rate=1.0, stream_cut_after=0)
    stream = client.chat.completions.create(
        model=WEAK, messages=[{"role": "user", "content": "Name three primes."}], stream=True
    )
    chunks = list(stream)
    assert {c.model for c in chunks} == {STRONG}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_stream_cut_after_first_token_is_an_error_not_a_truncated_success(gateway, client, gsm8k) -> None:
    gateway["emulator"].set_faults(STRONG, stream_cut_rate=1.0, stream_cut_after=2)
    stream = client.chat.completions.create(
        model=STRONG, messages=[{"role": "user", "content": gsm8k.iloc[7]["prompt"]}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as err:
        for c in stream:
            got.append(c)
    assert got, "the first tokens should have arrived before the cut"
    assert "mid-stream" in str(err.value)


def test_breaker_opens_and_closes(gateway, client) -> None:
    emu = gateway["emulator"]
    emu.set_faults(WEAK, error_rate=1.0, error_statuses=[500])
    ask(client, "What is 1+1?", model=WEAK)  # 3 failed tries -> open
    assert f'switchyard_breaker_state{{upstream="emulator-openai/{WEAK}"}} 2.0' in metrics(gateway)
    before = emu.stats()["requests"].get(WEAK, 0)
    raw, resp = ask(client, "What is 1+1?", model=WEAK)
    assert resp.model == STRONG
    assert emu.stats()["requests"].get(WEAK, 0) == before, "an open breaker must not call the upstream"
    emu.clear_faults(WEAK)
    time.sleep(2.2)
    raw, resp = ask(client, "What is 1+1?", model=WEAK)
    assert resp.model == WEAK
    assert f'switchyard_breaker_state{{upstream="emulator-openai/{WEAK}"}} 0.0' in metrics(gateway)


def test_a_probe_whose_client_gives_up_does_not_stick_the_breaker(gateway, client) -> None:
    """Issue 15, item 2: open a breaker, let its one half-open probe hang upstream and the client
    give up during it; the model must serve again right after, not stay half-open forever."""
    emu = gateway["emulator"]
    model = "gpt-3.5-turbo-1106"
    gauge = f'switchyard_breaker_state{{upstream="emulator-openai/{model}"}}'
    emu.set_faults(model, error_rate=1.0, error_statuses=[500])
    raw, resp = ask(client, "What is 2+2?", model=model)  # 3 failed tries -> open
    assert resp.model != model and f"{gauge} 2.0" in metrics(gateway)
    emu.set_faults(model, hang_rate=1.0, hang_s=20, max_faults=1)  # the probe hangs, later calls do not
    time.sleep(2.3)  # past the reset timeout: the next call is the one half-open probe
    before = emu.stats()["requests"].get(model, 0)
    impatient = client.with_options(timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 3+3?"}])
    gave_up = time.perf_counter()
    assert emu.stats()["requests"].get(model, 0) == before + 1, "the probe should have reached the upstream"
    answered_by, deadline = [], gave_up + 12.0  # hung call's first-token timeout (3 s) + reset (2 s) + slack
    while time.perf_counter() < deadline:
        raw, resp = ask(client, "What is 4+4?", model=model)
        answered_by.append(resp.model)
        if resp.model == model:
            break
        time.sleep(0.2)
    recovered_s = time.perf_counter() - gave_up
    print(f"probe cancelled: answered by {answered_by} within {recovered_s:.2f}s")
    assert answered_by and answered_by[-1] == model, f"still not served by {model}: {answered_by}"
    assert f"{gauge} 0.0" in metrics(gateway)
    # sooner than the hung call's own first-token timeout (3 s) + a re-open (2 s) would allow: the
    # cancelled probe freed its slot, it was not left to time out and fail
    assert recovered_s < 2.5, f"recovered only after {recovered_s:.1f}s: {answered_by}"


def test_all_upstreams_failing_is_502_naming_the_upstream(gateway, client) -> None:
    gateway["emulator"].set_faults("*", error_rate=1.0, error_statuses=[500])
    gateway["emulator"].set_faults(WEAK, error_rate=1.0, error_statuses=[500])
    gateway["emulator"].set_faults(STRONG, error_rate=1.0, error_statuses=[500])
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="claude-instant-v1", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 502 and "emulator" in err.value.body["message"]
    time.sleep(2.2)  # let the breakers half-open again for the next tests


def test_policies_choice_and_cost_accounting(client, gsm8k, gateway, kafka_bootstrap, prefix) -> None:
    ids = {}
    for mode in ("route", "cascade", "hybrid"):
        raw, resp = ask(
            client, gsm8k.iloc[11]["prompt"], extra_body={"switchyard": {"task": "gsm8k", "mode": mode}}
        )
        ids[raw.headers["x-switchyard-request-id"]] = (
            mode,
            resp.model,
            float(raw.headers["x-switchyard-cost-usd"]),
        )
    events = [CallEvent.from_bytes(v) for v in consume_all(kafka_bootstrap, CALLS, prefix, expect=len(SENT))]
    by_id = {e.request_id: e for e in events}
    for rid, (mode, model, cost) in ids.items():
        ev = by_id[rid]
        assert ev.mode == mode and ev.chosen_model == model
        assert ev.cost_usd == pytest.approx(cost, rel=1e-6)
        assert ev.cost_usd == pytest.approx(sum(a.cost_usd for a in ev.attempts))
        assert ev.scores and ev.router_version
        if mode == "cascade":
            assert ev.attempts[0].accepted_score is not None or len(ev.attempts) == 1
            assert ev.escalated == (len([a for a in ev.attempts if a.status == "rejected"]) > 0)


def test_feedback_and_every_call_event_in_kafka(client, gateway, kafka_bootstrap, prefix) -> None:
    r = httpx.post(
        gateway["url"] + "/v1/feedback",
        json={"request_id": SENT[0], "label": "good"},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 202
    # a forged id (the kind a client could once set with x-request-id) reaches nothing: 404
    forged = httpx.post(
        gateway["url"] + "/v1/feedback",
        json={"request_id": "SPOOFED-ID-0001", "label": "bad"},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert forged.status_code == 404 and forged.json()["error"]["code"] == "request_not_found"
    fbs = [FeedbackEvent.from_bytes(v) for v in consume_all(kafka_bootstrap, FEEDBACK, prefix, expect=1)]
    assert [f.request_id for f in fbs] == [SENT[0]] and fbs[0].tenant
    events = [CallEvent.from_bytes(v) for v in consume_all(kafka_bootstrap, CALLS, prefix, expect=len(SENT))]
    counts = Counter(e.request_id for e in events)
    missing = [rid for rid in SENT if rid not in counts]
    assert not missing, f"{len(missing)} calls without an event"
    assert all(counts[rid] == 1 for rid in SENT), "duplicate call events"
    for e in events:
        # a call whose client gave up before any upstream answer (the breaker probe test) is
        # recorded too, as a client disconnect with no finished attempt
        gone = e.error == "client disconnected before the answer"
        assert e.prompt_hash and e.latency_ms > 0 and (e.attempts or gone), e


def test_what_listens_where(gateway) -> None:
    """Issue 19 (exposure): the gateway's HTTP port and every port of the local Ray instance
    (GCS, raylet, object manager, workers, agents, Serve's proxy) listen on loopback, but Serve's
    inter-deployment gRPC, which Ray's code binds to [::] (one per replica); every Ray server checks
    Ray's token, whose file only this user can read (docs/operations.md, "What listens where")."""
    import ipaddress
    import stat
    from urllib.parse import urlparse

    sockets = listening_sockets(os.getpid())
    port = urlparse(gateway["url"]).port
    assert {ip for _, _, ip, p in sockets if p == port} == {"127.0.0.1"}, sockets

    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)

    # everything else on loopback too, but Serve's inter-deployment gRPC ([::] in Ray's code), one
    # per replica, which checks Ray's token like every Ray server
    exposed = [s for s in sockets if not loopback(s[2])]
    assert all(ip == "::" and "ServeReplica" in cmd for _, cmd, ip, _ in exposed), exposed
    assert len(exposed) <= 2, exposed  # the ChatIngress and RouterDeployment replicas
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    token = Path.home() / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def _promote_and_wait(gateway, registry, key: str, *, expect_swap: bool = True):
    """Training's side of a rollout: move the alias, then read the gateway's /readyz (HTTP only)."""
    from training.promote import promote_and_wait

    v, res = promote_and_wait(
        registry["ms"], registry["versions"][key], gateway_url=gateway["url"], timeout_s=120
    )
    assert res is not None and res.swapped is expect_swap, res
    return res


def test_hot_swap_under_load_drops_nothing(gateway, client, registry) -> None:
    """Moving the alias is the rollout: every replica follows it, under load, dropping nothing; a
    corrupt version the alias is moved to is refused by every replica and never served; rollback
    is moving the alias back."""
    from training.promote import rollback_and_wait

    ready = httpx.get(gateway["url"] + "/readyz").json()
    pinned_a = f"models:/{registry['ms'].registered_model}/{registry['versions']['a']}"
    assert ready["router"]["follow"]["follows"] == registry["ref"]
    assert ready["router"]["follow"]["pinned"] == pinned_a == ready["routing"]["follow"]["pinned"]
    stop, results, errors = threading.Event(), [], []

    def load() -> None:
        c = openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)
        while not stop.is_set():
            try:
                raw = c.chat.completions.with_raw_response.create(
                    model="switchyard/auto", messages=[{"role": "user", "content": "What is 12 + 30?"}]
                )
                if raw.headers["x-switchyard-route-source"] != "router":
                    errors.append(f"served without the router: {raw.headers['x-switchyard-route-source']}")
                results.append(raw.headers.get("x-switchyard-router-version"))
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    res = _promote_and_wait(gateway, registry, "b")
    assert res.serving_version.startswith("knn-"), res
    time.sleep(2)
    at_b = len(results)
    # a corrupt version: every replica refuses it and keeps serving b; training is told so
    res = _promote_and_wait(gateway, registry, "bad", expect_swap=False)
    assert "refuses" in res.error and "corrupt" in res.error, res
    time.sleep(3)
    # rollback: the alias moves back to b (the version before the corrupt one); nothing changes
    v, res = rollback_and_wait(registry["ms"], gateway_url=gateway["url"], timeout_s=120)
    assert v == registry["versions"]["b"] and res.swapped, res
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    versions = [v for v in results if v]
    assert versions[0].startswith("mlp-") and versions[-1].startswith("knn-"), Counter(versions)
    # once b served, nothing else was: the corrupt copy of a never was
    assert all(v.startswith("knn-") for v in versions[at_b:]), Counter(versions[at_b:])
    ready = httpx.get(gateway["url"] + "/readyz").json()
    assert ready["router"]["version"].startswith("knn-") and ready["router"]["failed_swaps"] >= 1
    assert "corrupt" in ready["router"]["last_error"]


def test_a_static_router_scores_in_the_ingress_and_follows_the_swap(
    gateway, client, routers, registry, gsm8k
) -> None:
    """The cheap router: rolled out like any router (the alias moves), held and scored by the
    ingress itself (no hop to the router deployment), labelled ``cheap``; moving the alias back to
    a transformer router hands the scoring back to the deployment."""
    from services.router.artifact import load_local

    static_version = load_local(routers["static"]).version
    knobs = {"switchyard": {"task": "gsm8k", "mode": "route"}}

    def source_and_version() -> tuple[str, str]:
        raw, _ = ask(client, gsm8k.iloc[5]["prompt"], extra_body=knobs)
        return raw.headers["x-switchyard-route-source"], raw.headers["x-switchyard-router-version"]

    _promote_and_wait(gateway, registry, "static")
    assert source_and_version() == ("cheap", static_version)
    ready = httpx.get(gateway["url"] + "/readyz").json()
    assert ready["routing"]["primary"].startswith("cheap")
    assert ready["routing"]["cheap_router"] == static_version
    assert ready["router"]["version"] == static_version  # the deployment holds it too
    before = metrics(gateway)
    for i in range(10):
        raw, resp = ask(client, gsm8k.iloc[10 + i]["prompt"], extra_body=knobs)
        assert raw.headers["x-switchyard-route-source"] == "cheap" and resp.choices[0].message.content
    after = metrics(gateway)
    assert 'source="cheap"' in after and after != before
    # a transformer router again: the deployment scores; the static one stays as the cheap stage
    _promote_and_wait(gateway, registry, "b")
    src, version = source_and_version()
    assert src == "router" and version.startswith("knn-")
    ready = httpx.get(gateway["url"] + "/readyz").json()
    assert ready["routing"]["primary"] == "router deployment"
    assert ready["routing"]["cheap_router"] == static_version

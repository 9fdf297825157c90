"""The upstream emulator over real HTTP (a subprocess), with the official openai client."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from infra.emulator.judge import JUDGE_MODEL, judge_prompt, parse_grade
from services.catalog import load_catalog
from training.data import GPT4, MIXTRAL, load_gsm8k, load_mmlu, load_routerbench

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def emulator(data_dir):
    from infra.emulator.testing import run_emulator

    with run_emulator(data_dir=data_dir, chunk_words=3) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _clean(emulator):
    emulator.reset()
    yield


@pytest.fixture(scope="module")
def client(emulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.openai_base_url, api_key="test-key", max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def gsm8k(data_dir):
    return load_gsm8k(data_dir).frame


@pytest.fixture(scope="module")
def mmlu(data_dir):
    return load_mmlu(data_dir).frame


@pytest.fixture(scope="module")
def routerbench(data_dir):
    return load_routerbench(data_dir).frame


def _row(frame, strong: float, weak: float):
    """A row where GPT-4 and Mixtral have the given labels."""
    sel = frame[(frame["label:" + GPT4] == strong) & (frame["label:" + MIXTRAL] == weak)]
    return sel.iloc[len(sel) // 2]


def _ask(client, model: str, prompt: str, **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **kw
    )


def test_non_stream_replays_recorded_answers_with_usage_and_truth_header(client, gsm8k):
    row = _row(gsm8k, 1.0, 0.0)
    catalog = load_catalog()
    for model in (GPT4, MIXTRAL):
        raw = _ask(client, model, row["prompt"])
        resp = raw.parse()
        assert resp.choices[0].message.content == row["response:" + model]
        assert resp.model == model and resp.object == "chat.completion"
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
        assert raw.headers["x-emulator-correct"] == f"{row['label:' + model]:g}"
        assert raw.headers["x-emulator-prompt-hash"] == row["prompt_hash"]
        expected_cost = catalog.model(model).price.cost(
            resp.usage.prompt_tokens, resp.usage.completion_tokens
        )
        assert float(raw.headers["x-emulator-cost-usd"]) == pytest.approx(expected_cost, rel=1e-6)
        assert "correct" not in raw.text.lower()


def test_prompt_match_ignores_whitespace_and_system_message(client, gsm8k):
    row = _row(gsm8k, 1.0, 1.0)
    messy = "  " + row["prompt"].replace(" ", "  \n ") + "\n"
    resp = client.chat.completions.create(
        model=GPT4, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": messy}]
    )
    assert resp.choices[0].message.content == row["response:" + GPT4]


def test_stream_chunks_are_openai_format_and_concatenate_to_the_recorded_answer(client, gsm8k):
    row = _row(gsm8k, 0.0, 1.0)
    stream = client.chat.completions.create(
        model=MIXTRAL,
        messages=[{"role": "user", "content": row["prompt"]}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.model == MIXTRAL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == row["response:" + MIXTRAL]
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    non_stream = client.chat.completions.create(
        model=MIXTRAL, messages=[{"role": "user", "content": row["prompt"]}]
    )
    assert chunks[-1].usage.model_dump() == non_stream.usage.model_dump()


def test_raw_sse_ends_with_done_and_omits_usage_unless_asked(emulator, gsm8k):
    row = gsm8k.iloc[0]
    body = {"model": GPT4, "messages": [{"role": "user", "content": row["prompt"]}], "stream": True}
    with httpx.stream("POST", emulator.openai_base_url + "/chat/completions", json=body, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])


def test_mmlu_answers_a_letter_right_or_wrong_as_recorded(client, mmlu):
    for strong, weak in ((1.0, 0.0), (1.0, 1.0), (0.0, 1.0)):
        row = _row(mmlu, strong, weak)
        a_raw, b_raw = _ask(client, GPT4, row["prompt"]), _ask(client, MIXTRAL, row["prompt"])
        a, b = a_raw.parse().choices[0].message.content, b_raw.parse().choices[0].message.content
        assert a.startswith("Answer: ") and b.startswith("Answer: ")
        assert a_raw.headers["x-emulator-correct"] == f"{strong:g}"
        assert b_raw.headers["x-emulator-correct"] == f"{weak:g}"
        assert (a == b) == (strong == weak == 1.0)


def test_routerbench_model_answers_are_recorded_text(client, routerbench):
    row = routerbench[routerbench["response:claude-v2"].notna()].iloc[5]
    raw = _ask(client, "claude-v2", row["prompt"])
    assert raw.parse().choices[0].message.content == row["response:claude-v2"]
    assert raw.headers["x-emulator-task"] == row["task"]


def test_unknown_prompt_gets_a_deterministic_generic_answer(client):
    a, b = (
        _ask(client, GPT4, "What is the airspeed of a swallow?"),
        _ask(client, GPT4, "What is the airspeed of a swallow?"),
    )
    assert a.parse().choices[0].message.content == b.parse().choices[0].message.content
    assert a.headers["x-emulator-correct"] == "unknown"


def test_truth_endpoint_matches_the_data(emulator, gsm8k):
    row = _row(gsm8k, 1.0, 0.0)
    t = emulator.truth(row["prompt_hash"], MIXTRAL)
    assert (t["correct"], t["recorded_correct"], t["drifted"], t["task"]) == (0.0, 0.0, False, "gsm8k")
    assert emulator.truth(row["prompt_hash"])["labels"] == {GPT4: 1.0, MIXTRAL: 0.0}
    r = httpx.get(emulator.base_url + "/emulator/truth", params={"prompt_hash": "0" * 64})
    assert r.status_code == 404


def test_bad_requests_get_openai_errors(client, emulator):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "model_not_found"
    r = httpx.post(emulator.openai_base_url + "/chat/completions", content=b"{not json", timeout=5)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(
        emulator.openai_base_url + "/chat/completions", json={"model": GPT4, "messages": []}, timeout=5
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_models_endpoint_lists_catalog_and_judge(client):
    ids = {m.id for m in client.models.list()}
    assert set(load_catalog().model_ids) | {JUDGE_MODEL} == ids
    assert client.models.retrieve(MIXTRAL).id == MIXTRAL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ---- faults -----------------------------------------------------------------------------------
def test_error_rate_with_chosen_status_then_recovers_after_max_faults(client, emulator, gsm8k):
    emulator.set_faults(GPT4, error_rate=1.0, error_statuses=[503], max_faults=2)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(model=GPT4, messages=[{"role": "user", "content": "hi"}])
        assert exc.value.status_code == 503
        assert exc.value.body["code"] == "emulated_fault"
    assert client.chat.completions.create(model=GPT4, messages=[{"role": "user", "content": "hi"}]).choices
    # other models unaffected, and the share of errors follows the rate
    assert client.chat.completions.create(model=MIXTRAL, messages=[{"role": "user", "content": "hi"}]).choices
    emulator.set_faults("*", error_rate=0.3, error_statuses=[500, 502])
    statuses = []
    for _ in range(200):
        try:
            client.chat.completions.create(model=MIXTRAL, messages=[{"role": "user", "content": "hi"}])
            statuses.append(200)
        except openai.APIStatusError as e:
            statuses.append(e.status_code)
    errors = [s for s in statuses if s != 200]
    assert set(errors) == {500, 502}
    assert 0.2 < len(errors) / len(statuses) < 0.4


def test_rate_limit_429_with_retry_after(client, emulator):
    emulator.set_faults(MIXTRAL, rate_limit_rate=1.0, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model=MIXTRAL, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.response.headers["retry-after"] == "7"


def test_hang_past_the_client_timeout(emulator):
    emulator.set_faults(GPT4, hang_rate=1.0, hang_s=3)
    fast = openai.OpenAI(base_url=emulator.openai_base_url, api_key="k", max_retries=0, timeout=0.5)
    t0 = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        fast.chat.completions.create(model=GPT4, messages=[{"role": "user", "content": "hi"}])
    assert time.perf_counter() - t0 < 2.5


def test_stream_cut_after_n_chunks_breaks_the_connection(client, emulator, gsm8k):
    row = gsm8k.iloc[1]
    emulator.set_faults(GPT4, stream_cut_rate=1.0, stream_cut_after=3)
    got = []
    with pytest.raises((openai.APIConnectionError, httpx.HTTPError)):
        for c in client.chat.completions.create(
            model=GPT4, messages=[{"role": "user", "content": row["prompt"]}], stream=True
        ):
            got.append(c)
    assert len(got) == 3
    assert all(c.choices[0].finish_reason is None for c in got)


def test_stream_cut_eof_mode_ends_without_finish(client, emulator, gsm8k):
    row = gsm8k.iloc[1]
    emulator.set_faults(GPT4, stream_cut_rate=1.0, stream_cut_after=2, stream_cut_mode="eof")
    got = list(
        client.chat.completions.create(
            model=GPT4, messages=[{"role": "user", "content": row["prompt"]}], stream=True
        )
    )
    assert len(got) == 2 and got[-1].choices[0].finish_reason is None


def test_malformed_json_non_stream_and_stream(client, emulator):
    emulator.set_faults(MIXTRAL, malformed_rate=1.0)
    r = httpx.post(
        emulator.openai_base_url + "/chat/completions",
        timeout=5,
        json={"model": MIXTRAL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    with pytest.raises((json.JSONDecodeError, openai.APIError)):
        list(
            client.chat.completions.create(
                model=MIXTRAL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )


def test_fault_specs_are_validated(emulator):
    r = httpx.post(
        emulator.base_url + "/emulator/faults", json={"model": GPT4, "error_rate": 0.8, "hang_rate": 0.5}
    )
    assert r.status_code == 400 and "sum" in r.json()["error"]["message"]
    r = httpx.post(emulator.base_url + "/emulator/faults", json={"model": GPT4, "error_statuses": [200]})
    assert r.status_code == 400


# ---- drift, judge, latency ------------------------------------------------------------------------
def test_drift_turns_a_models_answers_wrong_on_one_task_from_a_moment(client, emulator, gsm8k, routerbench):
    row = _row(gsm8k, 1.0, 1.0)
    emulator.add_drift(MIXTRAL, "gsm8k", start_in_s=1.0)
    before = _ask(client, MIXTRAL, row["prompt"])
    assert before.headers["x-emulator-correct"] == "1"
    time.sleep(1.1)
    after = _ask(client, MIXTRAL, row["prompt"])
    assert after.headers["x-emulator-correct"] == "0" and after.headers["x-emulator-drifted"] == "1"
    assert after.parse().choices[0].message.content != row["response:" + MIXTRAL]
    assert emulator.truth(row["prompt_hash"], MIXTRAL)["correct"] == 0.0
    # another model on the same task is untouched; reset ends the drift
    assert _ask(client, GPT4, row["prompt"]).headers["x-emulator-correct"] == "1"
    emulator.reset()
    assert _ask(client, MIXTRAL, row["prompt"]).headers["x-emulator-correct"] == "1"


def test_judge_grades_like_the_ground_truth(client, gsm8k, mmlu):
    checked = 0
    for frame, n in ((gsm8k, 10), (mmlu, 10)):
        for _, row in frame.sample(n, random_state=1).iterrows():
            for model in (GPT4, MIXTRAL):
                answer = (
                    client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": row["prompt"]}]
                    )
                    .choices[0]
                    .message.content
                )
                reply = (
                    client.chat.completions.create(
                        model=JUDGE_MODEL,
                        messages=[{"role": "user", "content": judge_prompt(row["prompt"], answer)}],
                    )
                    .choices[0]
                    .message.content
                )
                assert parse_grade(reply) == row["label:" + model], (row["id"], model, reply)
                checked += 1
    assert checked == 40
    unsure = client.chat.completions.create(
        model=JUDGE_MODEL, messages=[{"role": "user", "content": judge_prompt("Is water wet?", "yes")}]
    )
    assert parse_grade(unsure.choices[0].message.content) == 0.5
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=JUDGE_MODEL, messages=[{"role": "user", "content": "grade this"}]
        )


def test_speed_factor_adds_realistic_latency(client, emulator, gsm8k):
    row = gsm8k.loc[gsm8k["response:" + GPT4].str.len().idxmin()]  # a short answer keeps the test short
    emulator.set_speed(1.0)
    t0 = time.perf_counter()
    resp = client.chat.completions.create(model=GPT4, messages=[{"role": "user", "content": row["prompt"]}])
    elapsed = time.perf_counter() - t0
    # frontier profile: 0.6 s to first token, 40 tokens/s, ±20% jitter
    expected = 0.6 + resp.usage.completion_tokens / 40
    assert 0.75 * expected < elapsed < 1.25 * expected + 0.5


# ---- Anthropic Messages ------------------------------------------------------------------------
ANTHROPIC_HEADERS = {
    "x-api-key": "test-key",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


def test_anthropic_messages_non_stream(emulator, routerbench):
    row = routerbench[routerbench["response:claude-v2"].notna()].iloc[7]
    body = {
        "model": "claude-v2",
        "max_tokens": 1024,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": row["prompt"]}]}],
    }
    r = httpx.post(emulator.base_url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS, timeout=10)
    assert r.status_code == 200
    msg = r.json()
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["model"] == "claude-v2"
    assert msg["content"] == [{"type": "text", "text": row["response:claude-v2"]}]
    assert msg["stop_reason"] == "end_turn" and msg["usage"]["input_tokens"] > 0
    assert r.headers["x-emulator-correct"] == f"{row['label:claude-v2']:g}"


def test_anthropic_messages_stream_event_sequence(emulator, routerbench):
    row = routerbench[routerbench["response:claude-instant-v1"].notna()].iloc[3]
    body = {
        "model": "claude-instant-v1",
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": row["prompt"]}],
    }
    with httpx.stream("POST", emulator.base_url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS) as r:
        lines = list(r.iter_lines())
    names = [ln[7:] for ln in lines if ln.startswith("event: ")]
    datas = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]
    assert names[:2] == ["message_start", "content_block_start"] and names[-3:] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [d["type"] for d in datas] == names
    text = "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta")
    assert text == row["response:claude-instant-v1"]
    assert datas[-2]["usage"]["output_tokens"] > 0


def test_anthropic_errors_use_anthropic_shape(emulator):
    r = httpx.post(
        emulator.base_url + "/v1/messages",
        headers=ANTHROPIC_HEADERS,
        json={"model": "claude-v2", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    emulator.set_faults("claude-v2", error_rate=1.0, error_statuses=[503])
    r = httpx.post(
        emulator.base_url + "/v1/messages",
        headers=ANTHROPIC_HEADERS,
        json={"model": "claude-v2", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"


def test_start_config_faults_apply(data_dir):
    from infra.emulator.testing import run_emulator

    config = {
        "faults": {GPT4: {"error_rate": 1.0, "error_statuses": [502]}},
        "latency": {MIXTRAL: {"ttft_s": 0.0, "tokens_per_s": 1e6}},
    }
    with run_emulator(data_dir=data_dir, datasets=["gsm8k"], config=config) as emu:
        c = openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as exc:
            c.chat.completions.create(model=GPT4, messages=[{"role": "user", "content": "hi"}])
        assert exc.value.status_code == 502
        assert c.chat.completions.create(model=MIXTRAL, messages=[{"role": "user", "content": "hi"}]).choices
        assert emu.stats()["faults"] == {"error": 1}


def test_tools_n_and_json_answers_with_the_openai_client(client, gsm8k):
    row = _row(gsm8k, 1.0, 1.0)
    tool = {
        "type": "function",
        "function": {
            "name": "calculator",
            "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}},
        },
    }
    msgs = [{"role": "user", "content": row["prompt"]}]
    r = client.chat.completions.create(model=GPT4, messages=msgs, tools=[tool], n=2)
    assert [c.finish_reason for c in r.choices] == ["tool_calls", "tool_calls"]
    call = r.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"expr": row["prompt"]}
    done = [
        *msgs,
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "4"},
    ]
    r = client.chat.completions.create(model=GPT4, messages=done, tools=[tool])
    assert (
        r.choices[0].message.content == row["response:" + GPT4]
    )  # the recorded answer, once the tool answered
    r = client.chat.completions.create(model=GPT4, messages=msgs, response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content) == {"answer": row["response:" + GPT4]}
    stream = client.chat.completions.create(model=MIXTRAL, messages=msgs, n=2, stream=True)
    texts: dict[int, str] = {}
    for c in stream:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
    assert texts == {0: row["response:" + MIXTRAL], 1: row["response:" + MIXTRAL]}


async def test_provider_arbitrage_buys_cheapest_then_fails_over_by_price(emulator, routerbench) -> None:
    """A model two providers sell (the built-in catalog's offers), over real HTTP: the cheaper one
    serves at its price; with faults on it (through its /p/<provider>/ prefix only), the pool
    fails over to the next by price and the attempts name both."""
    from services.catalog import Catalog
    from services.providers.pool import ProviderPool, RetryPolicy

    model, cheap, listed = "mistralai/mixtral-8x7b-chat", "emulator-budgetcloud", "emulator-openai"
    raw = load_catalog().model_dump()
    for p in raw["providers"]:  # point every provider at this emulator, keeping its path
        p["base_url"] = emulator.base_url + httpx.URL(p["base_url"]).path.rstrip("/")
    catalog = Catalog.model_validate(raw)
    row = routerbench[routerbench["response:" + model].notna()].iloc[3]
    payload = {"messages": [{"role": "user", "content": row["prompt"]}]}
    # the emulator sells it under the provider's prefix at that offer's price; not what it does not sell
    r = httpx.post(emulator.provider_base_url(cheap) + "/chat/completions", json={"model": model, **payload})
    usage = r.json()["usage"]
    price = catalog.offer(model, cheap).price
    expected = price.cost(usage["prompt_tokens"], usage["completion_tokens"])
    assert r.status_code == 200 and float(r.headers["x-emulator-cost-usd"]) == pytest.approx(expected)
    r = httpx.post(emulator.provider_base_url(cheap) + "/chat/completions", json={"model": GPT4, **payload})
    assert r.status_code == 404 and cheap in r.json()["error"]["message"]

    pool = ProviderPool(catalog, retry=RetryPolicy(initial_s=0.01, max_s=0.05))
    try:
        attempts: list = []
        served, result = await pool.complete([model], payload, attempts)
        assert served == model and result.content == row["response:" + model]
        assert [(a.provider, a.status) for a in attempts] == [(cheap, "ok")]
        assert attempts[0].cost_usd == pytest.approx(
            price.cost(result.prompt_tokens, result.completion_tokens)
        )

        emulator.set_faults(model, provider=cheap, error_rate=1.0, error_statuses=[503])
        attempts = []
        served, result = await pool.complete([model], payload, attempts)
        assert served == model and result.content == row["response:" + model]
        assert [(a.provider, a.status, a.http_status) for a in attempts] == [
            (cheap, "error", 503),
            (listed, "ok", None),
        ]
        listed_price = catalog.offer(model, listed).price
        assert attempts[1].cost_usd == pytest.approx(
            listed_price.cost(result.prompt_tokens, result.completion_tokens)
        )
        stats = emulator.stats()
        assert stats["requests_by_provider"][cheap][model] == 3  # the direct call, then one per pool call
        assert stats["requests"][model] == 4  # the listed offer's URL is the plain /v1
    finally:
        await pool.aclose()

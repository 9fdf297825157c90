"""Cached-token pricing end to end over real HTTP: the emulator reports prompt-cache reads and
writes as OpenAI and Anthropic do, the gateway's pool parses them through its real adapters and
prices every attempt at the catalog's cached rates (the same cost the emulator bills)."""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit

import pytest
import yaml

from services.catalog import Catalog
from services.contracts.events import Attempt
from services.providers.pool import ProviderPool
from training.data import GPT4, MIXTRAL, load_gsm8k

pytestmark = pytest.mark.integration

CLAUDE = "claude-v2"
PORT = 18290
# a shared ~1,500-token system prompt (a long instruction block, as RAG or agent prompts carry)
SYSTEM = "You are a careful maths tutor. Show each step, then give the final number. " * 80


@pytest.fixture(scope="module")
def emulator(data_dir):
    from infra.emulator.testing import run_emulator

    with run_emulator(data_dir=data_dir, datasets=["gsm8k"], port=PORT) as emu:
        yield emu


@pytest.fixture(scope="module")
def questions(data_dir) -> list[str]:
    return load_gsm8k(data_dir).frame["prompt"].head(3).tolist()


@pytest.fixture
async def pool(emulator):
    emulator.reset()  # an empty prompt cache
    raw = yaml.safe_load(resources.files("services").joinpath("catalog.yaml").read_text())
    for p in raw["providers"]:
        p["base_url"] = emulator.base_url + urlsplit(p["base_url"]).path
    pool = ProviderPool(Catalog.model_validate(raw))
    yield pool
    await pool.aclose()


def _ask(question: str, cache_control: bool = False) -> dict:
    system: object = SYSTEM
    if cache_control:
        system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}


async def test_openai_prefix_reads_are_parsed_and_priced(pool, questions):
    attempts: list[Attempt] = []
    _, cold = await pool.complete([GPT4], _ask(questions[0]), attempts)
    _, warm = await pool.complete([GPT4], _ask(questions[1]), attempts)
    assert cold.cached_tokens == 0 and cold.prompt_tokens > 1024
    assert 1024 <= warm.cached_tokens < warm.prompt_tokens  # the shared system prompt, not the question
    assert warm.body["usage"]["prompt_tokens_details"]["cached_tokens"] == warm.cached_tokens
    price = pool.catalog.model(GPT4).price
    assert attempts[-1].cost_usd == pytest.approx(
        price.cost(warm.prompt_tokens, warm.completion_tokens, warm.cached_tokens)
    )
    assert attempts[-1].cost_usd < price.cost(warm.prompt_tokens, warm.completion_tokens)
    handle = await pool.stream([GPT4], _ask(questions[2]), attempts)
    [c async for c in handle.chunks]
    assert (
        handle.usage.cached_tokens == warm.cached_tokens and attempts[-1].cached_tokens == warm.cached_tokens
    )
    # a model whose provider publishes no cached rate reports no cached tokens
    _, mixtral = await pool.complete([MIXTRAL], _ask(questions[0]), attempts)
    _, mixtral = await pool.complete([MIXTRAL], _ask(questions[1]), attempts)
    assert mixtral.cached_tokens == 0


async def test_anthropic_cache_control_writes_then_reads(pool, questions):
    attempts: list[Attempt] = []
    _, plain = await pool.complete([CLAUDE], _ask(questions[0]), attempts)
    _, plain = await pool.complete([CLAUDE], _ask(questions[0]), attempts)
    assert plain.cached_tokens == plain.cache_write_tokens == 0  # Anthropic caches marked prefixes only
    _, first = await pool.complete([CLAUDE], _ask(questions[0], cache_control=True), attempts)
    assert first.cached_tokens == 0 and 1024 <= first.cache_write_tokens < first.prompt_tokens
    handle = await pool.stream([CLAUDE], _ask(questions[1], cache_control=True), attempts)
    [c async for c in handle.chunks]
    u = handle.usage
    assert (u.cached_tokens, u.cache_write_tokens) == (first.cache_write_tokens, 0)
    price = pool.catalog.model(CLAUDE).price
    assert attempts[-1].cost_usd == pytest.approx(
        price.cost(u.prompt_tokens, u.completion_tokens, u.cached_tokens)
    )
    assert first.body["usage"]["prompt_tokens_details"]["cache_write_tokens"] == first.cache_write_tokens

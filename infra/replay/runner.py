"""Replay benchmark prompts against an OpenAI-compatible base URL with the official openai client.

Each request sets the task (``extra_body={"switchyard": {"task": ...}}`` and the
``X-Switchyard-Task`` header). Concurrency is a pool of workers; ``rate`` paces starts (open
loop, requests/s). Correctness comes from the emulator side channel: the ``x-emulator-correct``
header when the response carries it, else ``GET {emulator_url}/emulator/truth`` for the model
that answered. For a sampled share of answers it posts feedback
(``POST {base_url}/feedback {request_id, score, source}``; request id from
``x-switchyard-request-id``, else the completion id). Each :class:`Result` carries its start
and end time, so callers can place it on a timeline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.emulator.corpus import Corpus, PromptRecord, count_tokens, prompt_tokens
from infra.emulator.settings import EmulatorSettings
from services.catalog import Catalog

from .config import ReplayConfig, Result
from .paraphrase import Variant, near_duplicate
from .scenarios import Scenario, resolve_mix
from .summary import summarize

log = logging.getLogger(__name__)


@dataclass
class _Job:
    phase: str
    record: PromptRecord
    variant: Variant | None = None  # a near-duplicate of ``record`` (sent instead of its prompt)

    @property
    def prompt(self) -> str:
        return self.variant.prompt if self.variant is not None else self.record.prompt


class Plan:
    """Which prompt each request sends: phases in order, tasks drawn from the phase mix (seeded)."""

    def __init__(self, scenario: Scenario, corpus: Corpus, seed: int, near_duplicates: float = 0.0) -> None:
        self.scenario = scenario
        self.rng = random.Random(seed)
        self.near_duplicates = near_duplicates
        self.sent: list[PromptRecord] = []  # fresh prompts so far: the near-duplicates' sources
        self.by_task: dict[str, list[PromptRecord]] = {}
        for rec in corpus.by_text.values():
            self.by_task.setdefault(rec.task, []).append(rec)
        sizes = {t: len(v) for t, v in self.by_task.items()}
        datasets = {t: v[0].dataset for t, v in self.by_task.items()}
        self.mixes = [resolve_mix(p.mix, sizes, datasets, p.exclude_tasks) for p in scenario.phases]

    def draw(self, phase_index: int) -> _Job:
        phase = self.scenario.phases[phase_index].name
        if self.sent and self.rng.random() < self.near_duplicates:
            source = self.rng.choice(self.sent)
            return _Job(phase, source, near_duplicate(source.prompt_hash, source.prompt, self.rng))
        mix = self.mixes[phase_index]
        task = self.rng.choices(list(mix), weights=list(mix.values()))[0]
        record = self.rng.choice(self.by_task[task])
        self.sent.append(record)
        return _Job(phase, record)

    def by_count(self, count: int) -> Iterator[tuple[int, _Job]]:
        for i, n in enumerate(self.scenario.phase_counts(count)):
            for _ in range(n):
                yield i, self.draw(i)

    def by_duration(self, duration_s: float, start: float) -> Iterator[tuple[int, _Job]]:
        bounds, acc = [], 0.0
        for p in self.scenario.phases:
            acc += p.share * duration_s
            bounds.append(acc)
        while (elapsed := time.monotonic() - start) < duration_s:
            i = next(k for k, b in enumerate(bounds) if elapsed < b or k == len(bounds) - 1)
            yield i, self.draw(i)


class Replayer:
    """Runs a :class:`Plan` against a base URL and collects :class:`Result` rows."""

    def __init__(self, config: ReplayConfig, scenario: Scenario, corpus: Corpus, catalog: Catalog) -> None:
        self.config = config
        self.scenario = scenario
        self.corpus = corpus
        self.catalog = catalog
        self.plan = Plan(scenario, corpus, config.seed, config.near_duplicates)
        self.results: list[Result] = []
        self._fb_rng = random.Random(f"feedback:{config.seed}")
        self._phases_started: set[int] = set()
        self._prices = {m.id: m.price for m in catalog.models}
        self._answered: dict[str, tuple[_Job, float | None]] = {}  # request id -> its job and grade

    def _cost(self, model: str | None, p_toks: int, c_toks: int) -> float | None:
        price = self._prices.get(model or "")
        return price.cost(p_toks, c_toks) if price else None

    def baseline(self, record: PromptRecord) -> tuple[float, float | None]:
        """Cost and correctness had the strong model answered (the emulator's token rules)."""
        strong = self.catalog.strong_model
        ans = record.recorded(strong)
        cost = self._cost(strong, prompt_tokens([record.prompt]), count_tokens(ans.text)) or 0.0
        return cost, record.labels.get(strong)

    async def _start_phase(self, index: int, admin: httpx.AsyncClient) -> None:
        if index in self._phases_started:
            return
        self._phases_started.add(index)
        phase = self.scenario.phases[index]
        log.info("replay: phase %d %r starts", index, phase.name)
        for action in phase.drift:
            if self.config.emulator_url is None:
                raise RuntimeError(f"phase {phase.name!r} needs the emulator admin URL for drift")
            r = await admin.post(
                self.config.emulator_url.rstrip("/") + "/emulator/drift", json=action.model_dump()
            )
            r.raise_for_status()
            log.info("replay: drift %s on %s from now", action.model, action.task)

    async def run(self) -> list[Result]:
        """Send every planned request; return the results (also kept on ``self.results``)."""
        import openai

        cfg = self.config
        client = openai.AsyncOpenAI(
            base_url=cfg.base_url,
            api_key=cfg.api_key,
            max_retries=cfg.max_retries,
            timeout=cfg.timeout_s,
            http_client=httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=cfg.concurrency * 2, max_keepalive_connections=cfg.concurrency * 2
                )
            ),
        )
        admin = httpx.AsyncClient(timeout=cfg.timeout_s, headers={"authorization": f"Bearer {cfg.api_key}"})
        start = time.monotonic()
        plan = (
            self.plan.by_count(cfg.count) if cfg.count else self.plan.by_duration(cfg.duration_s or 0, start)
        )
        issued = 0
        lock = asyncio.Lock()

        async def next_job() -> tuple[int, _Job] | None:
            nonlocal issued
            async with lock:
                item = next(plan, None)
                if item is None:
                    return None
                await self._start_phase(item[0], admin)
                if cfg.rate:
                    wait = start + issued / cfg.rate - time.monotonic()
                    issued += 1
                    if wait > 0:
                        await asyncio.sleep(wait)
                return item

        async def worker() -> None:
            while (item := await next_job()) is not None:
                started_at = time.time()
                result = await self._one(client, admin, item[1])
                result.started_at, result.finished_at = started_at, time.time()
                self.results.append(result)

        try:
            await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        finally:
            await client.close()
            await admin.aclose()
        self.elapsed_s = time.monotonic() - start
        return self.results

    async def _one(self, client, admin: httpx.AsyncClient, job: _Job) -> Result:  # noqa: ANN001
        import openai

        cfg, rec = self.config, job.record
        kwargs = dict(
            model=cfg.model,
            messages=[{"role": "user", "content": job.prompt}],
            extra_body={"switchyard": {"task": rec.task}},
            extra_headers={
                "X-Switchyard-Task": rec.task,
                **({} if cfg.cache else {"X-Switchyard-Cache": "off"}),
            },  # noqa: E501
        )
        base_cost, base_correct = self.baseline(rec)
        t0 = time.perf_counter()
        ttft = None
        model = None
        p_toks = c_toks = 0
        rid = None
        chunks = 0
        try:
            if cfg.stream:
                raw = await client.chat.completions.with_raw_response.create(
                    **kwargs, stream=True, stream_options={"include_usage": True}
                )
                headers = raw.headers
                async for chunk in raw.parse():
                    chunks += 1
                    if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                        ttft = time.perf_counter() - t0
                    model = chunk.model or model
                    rid = rid or chunk.id
                    if chunk.usage:
                        p_toks, c_toks = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            else:
                raw = await client.chat.completions.with_raw_response.create(**kwargs)
                headers = raw.headers
                comp = raw.parse()
                model, rid = comp.model, comp.id
                if comp.usage:
                    p_toks, c_toks = comp.usage.prompt_tokens, comp.usage.completion_tokens
        except openai.APIStatusError as exc:
            return self._failed(job, f"http_{exc.status_code}", t0, base_cost, base_correct)
        except openai.APITimeoutError:
            return self._failed(job, "timeout", t0, base_cost, base_correct)
        except (openai.APIConnectionError, httpx.HTTPError) as exc:
            kind = (
                "stream_broken"
                if chunks
                else "timeout"
                if isinstance(exc, httpx.TimeoutException)
                else "connection"
            )
            return self._failed(job, kind, t0, base_cost, base_correct)
        except ValueError:
            return self._failed(job, "malformed_json", t0, base_cost, base_correct)
        latency = time.perf_counter() - t0
        rid = headers.get("x-switchyard-request-id") or rid
        cost_header = headers.get("x-switchyard-cost-usd")
        cost = float(cost_header) if cost_header else self._cost(model, p_toks, c_toks)
        hit = headers.get("x-switchyard-cache") == "hit"
        fresh = None
        if job.variant is None or job.variant.same_answer:
            # the right answer is the source prompt's: what the model that answered gets on it
            header = headers.get("x-emulator-correct") if job.variant is None else None
            fresh = await self._truth(admin, header, rec, model)
        false_hit = None
        if hit:
            source, graded = self._answered.get(headers.get("x-switchyard-cache-source") or "", (None, None))
            same = (
                source is not None
                and source.record.prompt_hash == rec.prompt_hash
                and (job.variant is None or job.variant.same_answer)
            )
            correct = graded if same else 0.0
            false_hit = not same or (correct or 0.0) < (fresh or 0.0)
        else:
            correct = fresh
        if job.variant is not None and not job.variant.same_answer:
            base_correct = None  # a trap: what the strong model would get on it is not recorded
        result = Result(
            job.phase,
            rec.task,
            rec.prompt_hash,
            True,
            None,
            model,
            latency,
            ttft,
            p_toks,
            c_toks,
            cost,
            correct,
            base_cost,
            base_correct,
            rid,
            variant=job.variant.kind if job.variant is not None else "fresh",
            cache_hit=hit,
            false_hit=false_hit,
        )
        if rid:
            self._answered[rid] = (job, correct)
        if correct is not None and rid and self._fb_rng.random() < cfg.feedback_share:
            result.feedback = await self._feedback(admin, rid, correct)
        return result

    def _failed(
        self, job: _Job, error: str, t0: float, base_cost: float, base_correct: float | None
    ) -> Result:
        return Result(
            job.phase,
            job.record.task,
            job.record.prompt_hash,
            False,
            error,
            None,
            time.perf_counter() - t0,
            None,
            0,
            0,
            None,
            None,
            base_cost,
            base_correct,
        )

    async def _truth(
        self, admin: httpx.AsyncClient, header: str | None, rec: PromptRecord, model: str | None
    ) -> float | None:
        if header is not None and header != "unknown":
            return float(header)
        if header == "unknown" or self.config.emulator_url is None or model is None:
            return None
        try:
            r = await admin.get(
                self.config.emulator_url.rstrip("/") + "/emulator/truth",
                params={"prompt_hash": rec.prompt_hash, "model": model},
            )
            if r.status_code == 200:
                value = r.json().get("correct")
                return None if value is None else float(value)
        except httpx.HTTPError as exc:
            log.warning("replay: truth lookup failed: %s", exc)
        return None

    async def _feedback(self, admin: httpx.AsyncClient, request_id: str, correct: float) -> str:
        url = self.config.base_url.rstrip("/") + "/feedback"
        try:
            r = await admin.post(
                url, json={"request_id": request_id, "score": correct, "source": self.config.feedback_source}
            )
            return "sent" if r.status_code < 300 else "failed"
        except httpx.HTTPError:
            return "failed"


def replay(
    config: ReplayConfig,
    scenario: Scenario,
    data_dir: Path,
    catalog: Catalog,
    datasets: list[str] | None = None,
) -> tuple[Replayer, dict]:
    """Load the prompts (all datasets present, or ``datasets``); run the replay; return it and its summary."""
    corpus = Corpus.load(data_dir, datasets, EmulatorSettings().corpus_cache_dir())
    replayer = Replayer(config, scenario, corpus, catalog)
    asyncio.run(replayer.run())
    return replayer, summarize(replayer.results, replayer.elapsed_s, config, scenario, catalog)

"""The demo's traffic: chunks of benchmark requests through the gateway (:mod:`infra.replay`),
each kept as a :class:`Req` row stamped with its completion time."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from .settings import DemoSettings


@dataclass
class Req:
    """One replayed request, stamped with its completion time."""

    t: float
    stage: str
    task: str
    ok: bool
    error: str | None
    model: str | None
    tier: str | None
    cost: float | None
    correct: float | None
    base_cost: float
    base_correct: float | None
    dataset: str = ""
    variant: str = "fresh"  # a near-duplicate's kind (story (c))
    cache_hit: bool = False
    false_hit: bool | None = None


class Traffic:
    """Replays chunks of benchmark traffic through the gateway (infra.replay) and keeps the rows."""

    def __init__(
        self, base_url: str, api_key: str, emulator_url: str, data_dir: Path, cfg: DemoSettings
    ) -> None:
        from infra.emulator.corpus import Corpus
        from infra.emulator.settings import EmulatorSettings
        from services.catalog import load_catalog

        self.base_url, self.api_key, self.emulator_url, self.cfg = base_url, api_key, emulator_url, cfg
        self.catalog = load_catalog()
        self.tiers = {m.id: m.tier for m in self.catalog.models}
        self.corpus = Corpus.load(data_dir, None, EmulatorSettings().corpus_cache_dir())
        self.datasets = {rec.task: rec.dataset for rec in self.corpus.by_text.values()}
        self.rows: list[Req] = []
        self._chunk = 0

    def run(
        self,
        stage: str,
        *,
        count: int,
        mix: dict[str, float],
        exclude: tuple[str, ...] = (),
        drift: tuple = (),
        rate: float | None = None,
        cache: bool = False,
        near_duplicates: float = 0.0,
        seed: int | None = None,
    ) -> list[Req]:
        """Send ``count`` requests of ``mix``; returns (and keeps) their rows. The requests opt out
        of the semantic cache unless ``cache``; ``seed`` (default: one per chunk) fixes the prompts."""
        from infra.replay.config import ReplayConfig
        from infra.replay.runner import Replayer
        from infra.replay.scenarios import Phase, Scenario

        self._chunk += 1
        sc = Scenario(
            name=stage,
            description=stage,
            phases=(Phase(name=stage, share=1.0, mix=mix, exclude_tasks=exclude, drift=drift),),
        )
        conf = ReplayConfig(
            base_url=self.base_url,
            api_key=self.api_key,
            emulator_url=self.emulator_url,
            count=count,
            concurrency=self.cfg.concurrency,
            rate=rate,
            feedback_share=self.cfg.feedback_share,
            seed=seed if seed is not None else self.cfg.seed * 1000 + self._chunk,
            cache=cache,
            near_duplicates=near_duplicates,
            timeout_s=60.0,
        )
        rep = Replayer(conf, sc, self.corpus, self.catalog)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        asyncio.run(rep.run())
        out = [
            Req(
                r.finished_at,
                stage,
                r.task,
                r.ok,
                r.error,
                r.model,
                self.tiers.get(r.model or ""),
                r.cost_usd,
                r.correct,
                r.baseline_cost_usd,
                r.baseline_correct,
                self.datasets.get(r.task, ""),
                r.variant,
                r.cache_hit,
                r.false_hit,
            )
            for r in rep.results
        ]
        self.rows.extend(out)
        return out

    def stage_rows(self, stage: str) -> list[Req]:
        """Every row of one stage so far (all its chunks)."""
        return [r for r in self.rows if r.stage == stage]

    def routerbench_tasks(self) -> set[str]:
        """Tasks of the RouterBench dataset in the corpus (for plot grouping)."""
        return {rec.task for rec in self.corpus.by_hash.values() if rec.dataset == "routerbench"}

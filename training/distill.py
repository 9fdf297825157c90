"""Targeted distillation: cluster the hard queries, label them through the provider layer within a
budget (dollars and calls), weight the labels, and export the strong model's answers as an OpenAI
fine-tuning file for the cheap tier.

Per selected query and per label model (default: the strong and the cheap model) we ask the model
through :class:`services.providers.ProviderPool` (retries, breakers: the gateway's provider layer)
and grade its answer with the judge (same grading format as the gateway's cascade judge). A grade
of 0.5 (the judge cannot tell) yields no label. Every call reserves its worst-case cost first
(prompt estimate + ``max_tokens`` completion at the model's price) and is skipped when the
reservation would exceed the budget, so the spend never exceeds it.

Queries are picked round-robin over KMeans clusters of their (cached MiniLM) embeddings, nearest
the centroid first, so a small budget still covers every kind of hard query; a label's weight is
``distill_weight × cluster size / labelled in cluster`` (capped): it stands for its cluster.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from services.catalog import Catalog
from services.contracts import prompt_hash

log = logging.getLogger(__name__)


_GRADE = re.compile(r"GRADE:\s*([01](?:\.\d+)?)")


def parse_grade(reply: str) -> float:
    """The grade in a judge reply (``GRADE: 0|1|0.5``); ValueError when there is none."""
    m = _GRADE.search(reply or "")
    if not m:
        raise ValueError(f"no grade in judge reply {reply[:60]!r}")
    return float(m.group(1))


class BudgetExceeded(RuntimeError):
    """A call's reservation does not fit in what is left of the budget."""


@dataclass
class Budget:
    """Dollars and calls for one run; :meth:`reserve` before a call, :meth:`settle` after it."""

    usd: float
    calls: int
    spent_usd: float = 0.0
    used_calls: int = 0
    refused: int = 0

    def reserve(self, max_usd: float) -> None:
        """Claim one call costing at most ``max_usd``, or raise :class:`BudgetExceeded`."""
        if self.used_calls + 1 > self.calls or self.spent_usd + max_usd > self.usd + 1e-12:
            self.refused += 1
            raise BudgetExceeded(
                f"budget: {self.used_calls}/{self.calls} calls, ${self.spent_usd:.4f}/${self.usd:.4f} spent; "
                f"next call may cost ${max_usd:.4f}"
            )
        self.used_calls += 1
        self.spent_usd += max_usd

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """Replace a reservation by the call's actual cost (never more than reserved)."""
        self.spent_usd += min(actual_usd, reserved_usd) - reserved_usd

    @property
    def left_usd(self) -> float:
        return max(0.0, self.usd - self.spent_usd)


def estimate_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """A generous upper estimate of prompt tokens (≈3 characters a token + per-message overhead)."""
    return 8 + sum(8 + math.ceil(len(str(m.get("content") or "")) / 3) for m in messages)


def price_per_token(
    catalog: Catalog, model: str, judge_model: str, judge_price_per_m: float
) -> tuple[float, float]:
    """(input, output) USD per token of ``model`` (the judge's price comes from settings)."""
    if model == judge_model:
        return judge_price_per_m / 1e6, judge_price_per_m / 1e6
    p = catalog.model(model).price
    return p.input / 1e6, p.output / 1e6


class FineTuneMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class FineTuneExample(BaseModel):
    """One line of an OpenAI chat fine-tuning file: ``{"messages": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    messages: list[FineTuneMessage] = Field(min_length=2)


class DistillReport(BaseModel):
    """What distillation did and spent."""

    hard_queries: int
    unique_queries: int
    clusters: int
    selected: int
    labelled_queries: int
    labels: int
    calls: int
    spent_usd: float
    budget_usd: float
    budget_calls: int
    refused_calls: int
    failed_calls: int
    unsure_grades: int
    finetune_examples: int
    finetune_path: str | None = None
    finetune_per_task: dict[str, int] = Field(
        default_factory=dict, description="Fine-tuning examples per task of their hard query."
    )
    finetune_tokens: int = Field(default=0, description="Estimated tokens of the fine-tuning file.")
    per_cluster: list[dict[str, Any]] = Field(default_factory=list)


@dataclass
class Candidate:
    prompt_hash: str
    prompt: str
    task: str
    cluster: int = 0
    distance: float = 0.0


@dataclass
class Labelled:
    candidate: Candidate
    labels: dict[str, float] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)


def cluster_queries(
    cands: list[Candidate], embeddings: np.ndarray, n_clusters: int, seed: int = 0
) -> list[Candidate]:
    """Assign KMeans clusters (k ≤ number of queries) and centroid distances in place; returns them."""
    if not cands:
        return cands
    from sklearn.cluster import KMeans

    k = max(1, min(n_clusters, len(cands)))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(embeddings)
    d = np.linalg.norm(embeddings - km.cluster_centers_[km.labels_], axis=1)
    for c, lab, dist in zip(cands, km.labels_, d, strict=True):
        c.cluster, c.distance = int(lab), float(dist)
    return cands


def selection_order(cands: list[Candidate]) -> list[Candidate]:
    """Round-robin over clusters (largest first), nearest to the centroid first within a cluster."""
    by: dict[int, list[Candidate]] = {}
    for c in cands:
        by.setdefault(c.cluster, []).append(c)
    queues = [sorted(v, key=lambda c: c.distance) for _, v in sorted(by.items(), key=lambda kv: -len(kv[1]))]
    out: list[Candidate] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


async def _ask(pool, model: str, payload: dict[str, Any]) -> tuple[str, int, int]:  # noqa: ANN001
    """One model call through the provider pool (its retries and breaker); (text, in, out tokens)."""
    _, result = await pool.complete([model], payload, [])
    return result.content, result.prompt_tokens, result.completion_tokens


async def _judge(pool, provider: str, judge_model: str, payload: dict[str, Any]) -> tuple[str, int, int]:  # noqa: ANN001
    """One judge call on the judge provider's pooled adapter (as the gateway's cascade judge)."""
    result = await pool.adapters[provider].complete(payload, judge_model)
    return result.content, result.prompt_tokens, result.completion_tokens


async def label_queries(
    cands: list[Candidate],
    pool,  # noqa: ANN001 - services.providers.ProviderPool
    catalog: Catalog,
    budget: Budget,
    *,
    label_models: list[str],
    judge_model: str,
    judge_provider: str,
    judge_price_per_m: float,
    max_tokens: int,
    max_queries: int,
    max_failures: int = 6,
) -> tuple[list[Labelled], dict[str, int]]:
    """Ask each label model and the judge about the queries in order, until the budget or
    ``max_queries`` runs out, or ``max_failures`` calls in a row fail (upstream down). Returns the
    labelled queries and counters (failed, unsure)."""
    from services.errors import UpstreamError
    from services.gateway.scorer import judge_prompt

    counters = {"failed": 0, "unsure": 0}
    out: list[Labelled] = []
    stop = False
    streak = 0  # consecutive failed calls: an unavailable upstream ends distillation early

    class Stop(Exception):
        """The budget is spent or the upstream is down: distillation ends."""

    async def budgeted(call, msgs: list[dict[str, Any]], price: str, max_out: int, what: str) -> str | None:  # noqa: ANN001
        """One call that first reserves its worst-case cost: its text, or None when it failed."""
        nonlocal streak
        pin, pout = price_per_token(catalog, price, judge_model, judge_price_per_m)
        reserve = estimate_prompt_tokens(msgs) * pin + max_out * pout
        try:
            budget.reserve(reserve)
        except BudgetExceeded as exc:
            log.info("distillation stops: %s", exc)
            raise Stop from exc
        try:
            text, tin, tout = await call({"messages": msgs, "max_tokens": max_out, "temperature": 0})
            budget.settle(reserve, tin * pin + tout * pout)
        except UpstreamError as exc:
            budget.settle(reserve, 0.0)
            log.warning("%s failed: %s", what, exc.message)
            counters["failed"] += 1
            streak += 1
            if streak >= max_failures:
                raise Stop from exc
            return None
        streak = 0
        return text

    for cand in cands[:max_queries]:
        lab = Labelled(cand)
        try:
            for model in label_models:
                text = await budgeted(
                    lambda payload, model=model: _ask(pool, model, payload),
                    [{"role": "user", "content": cand.prompt}],
                    model,
                    max_tokens,
                    f"distillation call to {model}",
                )
                if text is None:
                    continue
                lab.answers[model] = text
                reply = await budgeted(
                    lambda payload: _judge(pool, judge_provider, judge_model, payload),
                    [{"role": "user", "content": judge_prompt(cand.prompt, text)}],
                    judge_model,
                    16,
                    "judge call",
                )
                if reply is None:
                    continue
                try:
                    grade = parse_grade(reply)
                except ValueError:
                    counters["unsure"] += 1
                    continue
                if grade in (0.0, 1.0):
                    lab.labels[model] = grade
                else:
                    counters["unsure"] += 1
        except Stop:
            stop = True
        if lab.labels:
            out.append(lab)
        if stop:
            break
    return out, counters


def weights(labelled: list[Labelled], cands: list[Candidate], base: float, cap: int) -> dict[str, int]:
    """Integer weight per labelled prompt hash: ``base × cluster size / labelled in cluster``, capped."""
    size: dict[int, int] = {}
    for c in cands:
        size[c.cluster] = size.get(c.cluster, 0) + 1
    done: dict[int, int] = {}
    for lab in labelled:
        done[lab.candidate.cluster] = done.get(lab.candidate.cluster, 0) + 1
    out = {}
    for lab in labelled:
        cl = lab.candidate.cluster
        w = base * size[cl] / max(1, done[cl])
        out[lab.candidate.prompt_hash] = int(max(1, min(cap, round(w))))
    return out


def _exported(lab: Labelled, strong_model: str) -> bool:
    """Whether a labelled query yields a fine-tuning example: the judge accepted the strong answer."""
    answer = lab.answers.get(strong_model)
    return lab.labels.get(strong_model) == 1.0 and bool(answer and answer.strip())


def finetune_examples(
    labelled: list[Labelled], strong_model: str, system: str | None = None
) -> list[FineTuneExample]:
    """The strong model's answers that the judge accepted, as chat fine-tuning examples."""
    out = []
    for lab in labelled:
        if not _exported(lab, strong_model):
            continue
        answer = lab.answers[strong_model]
        msgs = ([FineTuneMessage(role="system", content=system)] if system else []) + [
            FineTuneMessage(role="user", content=lab.candidate.prompt),
            FineTuneMessage(role="assistant", content=answer),
        ]
        out.append(FineTuneExample(messages=msgs))
    return out


def finetune_per_task(labelled: list[Labelled], strong_model: str) -> dict[str, int]:
    """How many fine-tuning examples each task contributes (the tasks of their hard queries)."""
    out: dict[str, int] = {}
    for lab in labelled:
        if _exported(lab, strong_model):
            out[lab.candidate.task] = out.get(lab.candidate.task, 0) + 1
    return dict(sorted(out.items()))


def estimate_finetune_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Tokens one fine-tuning example is billed for, estimated: ≈4 characters a token, plus 4 per
    message and 2 per example (OpenAI's chat accounting; no tokenizer needed)."""
    return 2 + sum(4 + math.ceil(len(str(m.get("content") or "")) / 4) for m in messages)


def write_finetune_jsonl(examples: list[FineTuneExample], path: Path) -> Path:
    """One ``{"messages": [...]}`` JSON object per line (OpenAI chat fine-tuning format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with tmp.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.model_dump(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def labels_frame(labelled: list[Labelled], w: dict[str, int]) -> pd.DataFrame:
    """Fresh-label rows (prompt_hash, prompt, task, model, label, weight, source='distilled')."""
    rows = [
        {
            "prompt_hash": lab.candidate.prompt_hash,
            "prompt": lab.candidate.prompt,
            "task": lab.candidate.task,
            "model": m,
            "label": y,
            "weight": w[lab.candidate.prompt_hash],
            "source": "distilled",
        }
        for lab in labelled
        for m, y in lab.labels.items()
    ]
    return pd.DataFrame(rows, columns=["prompt_hash", "prompt", "task", "model", "label", "weight", "source"])


async def distill(
    hard_queries: Sequence[Any],
    lookup: dict[str, tuple[str, str]],
    embed,  # noqa: ANN001 - (prompts, hashes) -> np.ndarray
    pool,  # noqa: ANN001 - services.providers.ProviderPool
    catalog: Catalog,
    settings: Any,
    out_dir: Path,
) -> tuple[pd.DataFrame, DistillReport]:
    """The whole step for one run: de-duplicate, cluster, label within budget, weight, export.
    ``settings`` is a :class:`training.settings.TrainSettings`."""
    seen: dict[str, Candidate] = {}
    for h in hard_queries:
        prompt = h.prompt or lookup.get(h.prompt_hash, (None, None))[0]
        key = prompt_hash(prompt) if prompt else None  # plain: the identity inside training
        if prompt and key not in seen:
            seen[key] = Candidate(key, prompt, h.task)
    cands = list(seen.values())
    if cands:
        emb = embed([c.prompt for c in cands], [c.prompt_hash for c in cands])
        cluster_queries(cands, emb, settings.clusters)
    order = selection_order(cands)
    budget = Budget(usd=settings.budget_usd, calls=settings.budget_calls)
    labelled, counters = await label_queries(
        order,
        pool,
        catalog,
        budget,
        label_models=list(settings.label_models),
        judge_model=settings.judge_model,
        judge_provider=settings.judge_provider,
        judge_price_per_m=settings.judge_price_per_m,
        max_tokens=settings.max_tokens,
        max_queries=settings.max_queries,
    )
    w = weights(labelled, cands, settings.distill_weight, settings.max_weight)
    examples = finetune_examples(labelled, catalog.strong_model)
    slug = settings.cheap_model.replace("/", "_")
    ft_path = write_finetune_jsonl(examples, out_dir / f"finetune-{slug}.jsonl") if examples else None
    per_cluster: dict[int, dict[str, Any]] = {}
    for c in cands:
        e = per_cluster.setdefault(c.cluster, {"cluster": c.cluster, "size": 0, "labelled": 0, "tasks": {}})
        e["size"] += 1
        e["tasks"][c.task] = e["tasks"].get(c.task, 0) + 1
    for lab in labelled:
        per_cluster[lab.candidate.cluster]["labelled"] += 1
    report = DistillReport(
        hard_queries=len(hard_queries),
        unique_queries=len(cands),
        clusters=len(per_cluster),
        selected=len(order),
        labelled_queries=len(labelled),
        labels=sum(len(x.labels) for x in labelled),
        calls=budget.used_calls,
        spent_usd=round(budget.spent_usd, 8),
        budget_usd=budget.usd,
        budget_calls=budget.calls,
        refused_calls=budget.refused,
        failed_calls=counters["failed"],
        unsure_grades=counters["unsure"],
        finetune_examples=len(examples),
        finetune_path=str(ft_path) if ft_path else None,
        finetune_per_task=finetune_per_task(labelled, catalog.strong_model),
        finetune_tokens=sum(estimate_finetune_tokens(ex.model_dump()["messages"]) for ex in examples),
        per_cluster=sorted(per_cluster.values(), key=lambda e: -e["size"]),
    )
    log.info(
        "distilled %d queries (%d labels) for $%.4f in %d calls",
        report.labelled_queries,
        report.labels,
        report.spent_usd,
        report.calls,
    )
    return labels_frame(labelled, w), report

"""Budgeted exploration (DESIGN.md "Streams", savings opportunities): for a task whose routed
traffic goes mostly to the top tier, a small share of its requests also gets a shadow call to the
cheapest cheaper candidate the policy considered for the request, graded by the judge, so the
evidence that a cheaper tier would do (or would not) keeps coming without anyone paying for it on
the client's path.

:class:`Explorer` only decides and accounts; the shadow call itself runs in
:class:`services.gateway.service.ChatService` (off the request path, through the provider pool and
the judge). Per replica, in memory:

- **candidate**: over the task's last ``window`` routed requests (at least ``min_requests`` of
  them), at least ``expensive_share`` were answered by a model of the catalog's top tier;
- **share**: a candidate's requests are sampled with probability ``share`` (a seeded,
  injectable RNG);
- **budget**: a task's shadow spend (the shadow call plus its judge call) over the last hour,
  with the estimates of calls still running, stays within ``budget_usd_per_task_hour``: a call is
  only started when its estimate fits, and its actual cost replaces the estimate when it ends;
- **busy**: at most ``max_concurrency`` shadow calls run at once in the replica (no queue: a
  request that finds them all busy is skipped).

With a shared rate-limit store (``SWITCHYARD_GATEWAY_RATE_LIMIT_STORAGE=redis://...``) the budget
is the fleet's instead: a :class:`~services.gateway.ratelimit.SharedBudget` every replica spends,
asked by the shadow call before it starts (``budget`` is then counted there, not here).
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.catalog import Catalog

from .ratelimit import SharedBudget
from .scorer import JudgeScorer

HOUR_S = 3600.0
# A judge call sends the question, the answer and ~60 tokens of instructions; it answers `GRADE: x`.
JUDGE_OVERHEAD_TOKENS = 60
JUDGE_ANSWER_TOKENS = 5


@dataclass(frozen=True)
class ExploreConfig:
    """What :class:`Explorer` decides by (the gateway's ``explore_*`` settings)."""

    enabled: bool = True
    share: float = 0.05
    expensive_share: float = 0.8
    min_requests: int = 50
    window: int = 200
    budget_usd_per_task_hour: float = 0.25
    max_concurrency: int = 4
    max_tasks: int = 1000
    judge_usd_per_mtok: float | None = None


@dataclass(frozen=True)
class Ticket:
    """A shadow call the explorer admitted: its budget reservation until :meth:`Explorer.settle`."""

    task: str
    model: str
    estimate_usd: float


@dataclass
class _TaskState:
    window: deque[bool] = field(default_factory=deque)  # True: answered by the top tier
    expensive: int = 0
    spend: deque[tuple[float, float]] = field(default_factory=deque)  # (ts, usd), the last hour
    reserved: float = 0.0


class Explorer:
    """Per-task candidate windows, sampling, hourly budgets and the concurrency cap."""

    SKIP_REASONS = ("not_candidate", "no_cheaper", "share", "busy", "budget")

    def __init__(
        self,
        catalog: Catalog,
        config: ExploreConfig,
        judge: JudgeScorer | None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        budget: SharedBudget | None = None,
    ):
        self.catalog = catalog
        self.config = config
        self.judge = judge
        self.rng = rng or random.Random()
        self.clock = clock
        self.budget = budget  # the fleet's budget, asked by the shadow call itself; None: this one
        self.in_flight = 0
        self._tasks: OrderedDict[str, _TaskState] = OrderedDict()
        self._top = len(catalog.tiers) - 1

    @property
    def active(self) -> bool:
        """Exploration runs only when it is on and a judge can label the shadow answers."""
        return self.config.enabled and self.judge is not None and self.config.share > 0

    # -- the per-request decision -----------------------------------------------------------------

    def consider(
        self,
        task: str,
        routed_model: str,
        scored: Iterable[str],
        tried: Iterable[str] = (),
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> Ticket | str:
        """Fold one routed request in and decide: a :class:`Ticket` (the caller must run the
        shadow call and :meth:`settle` it) or the skip reason, one of :attr:`SKIP_REASONS`."""
        st = self._state(task)
        expensive = self.catalog.tier_rank(routed_model) >= self._top
        st.window.append(expensive)
        st.expensive += expensive
        if len(st.window) > self.config.window:
            st.expensive -= st.window.popleft()
        if not self.is_candidate(task):
            return "not_candidate"
        model = self.shadow_model(routed_model, scored, tried)
        if model is None:
            return "no_cheaper"
        if self.rng.random() >= self.config.share:
            return "share"
        if self.in_flight >= self.config.max_concurrency:
            return "busy"
        estimate = self.estimate_usd(model, prompt_tokens, completion_tokens)
        if self.budget is None and self.spent_usd(task) + estimate > self.config.budget_usd_per_task_hour:
            return "budget"
        st.reserved += estimate
        self.in_flight += 1
        return Ticket(task, model, estimate)

    def settle(self, ticket: Ticket, actual_usd: float) -> None:
        """The shadow call ended (however it ended): its actual cost replaces the estimate."""
        st = self._state(ticket.task)
        st.reserved = max(0.0, st.reserved - ticket.estimate_usd)
        if actual_usd > 0:
            st.spend.append((self.clock(), actual_usd))
        self.in_flight = max(0, self.in_flight - 1)

    # -- what it decides by -----------------------------------------------------------------------

    def is_candidate(self, task: str) -> bool:
        st = self._tasks.get(task)
        if st is None or len(st.window) < max(1, self.config.min_requests):
            return False
        return st.expensive / len(st.window) >= self.config.expensive_share

    def shadow_model(self, routed_model: str, scored: Iterable[str], tried: Iterable[str] = ()) -> str | None:
        """The cheapest of ``scored`` in a lower tier than ``routed_model`` that this request has
        not already tried (a cascade's rejected rung is evidence already). The gateway passes the
        policy's candidates for the request (its ranking), not every model the router scored: a
        model outside the task's calibrated candidates would never be routed to, so its answers
        are no evidence for the task (and the emulator has no recorded answer to grade)."""
        known, done = set(self.catalog.model_ids), set(tried)
        rank = self.catalog.tier_rank(routed_model)
        cheaper = [m for m in scored if m in known and m not in done and self.catalog.tier_rank(m) < rank]
        return min(cheaper, key=lambda m: (self.catalog.blended_price(m), m)) if cheaper else None

    def spent_usd(self, task: str) -> float:
        """The task's shadow spend over the last hour plus the estimates of calls still running."""
        st = self._state(task)
        cutoff = self.clock() - HOUR_S
        while st.spend and st.spend[0][0] <= cutoff:
            st.spend.popleft()
        return sum(usd for _, usd in st.spend) + st.reserved

    def estimate_usd(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Before the call: the shadow call at ``model``'s price with the routed call's token
        counts, plus its judge call."""
        shadow = self.catalog.model(model).price.cost(prompt_tokens, completion_tokens)
        return shadow + self.judge_cost_usd(
            prompt_tokens + completion_tokens + JUDGE_OVERHEAD_TOKENS, JUDGE_ANSWER_TOKENS
        )

    def judge_cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """A judge call's cost: the judge model's catalog price when the catalog lists it, else
        ``judge_usd_per_mtok``, else the strong model's (a judge is usually a frontier model)."""
        name = self.judge.judge_model if self.judge is not None else None
        if name in self.catalog.model_ids:
            return self.catalog.model(name).price.cost(prompt_tokens, completion_tokens)
        per_mtok = self.config.judge_usd_per_mtok
        if per_mtok is None:
            per_mtok = self.catalog.blended_price(self.catalog.strong_model)
        return (prompt_tokens + completion_tokens) * per_mtok / 1e6

    def _state(self, task: str) -> _TaskState:
        st = self._tasks.get(task)
        if st is None:
            st = self._tasks[task] = _TaskState()
            while len(self._tasks) > self.config.max_tasks:  # the least recently seen task goes
                self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(task)
        return st

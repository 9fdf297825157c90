"""Per-task drift monitoring: feeds detectors, turns their changes into de-duplicated alerts.

Pure except for writing evidently HTML reports: the Faust agents give it batches of outcomes and
router features of one task and publish what it returns; the benchmark drives the same class.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.contracts import AlertEvent, AlertStatus, OutcomeEvent, RetrainRequest
from services.contracts.events import RoutingMode

from .alerts import AlertTracker
from .cachewatch import DETECTOR as CACHE_DETECTOR
from .cachewatch import CacheWatch
from .cachewatch import summary as cache_summary
from .detectors import (
    CalibrationDrift,
    Change,
    InputDrift,
    InputDriftResult,
    QualityCusum,
    drift_report,
    write_report,
)
from .idempotence import fresh, marked
from .opportunity import Opportunity, OpportunityDetector
from .opportunity import summary as opportunity_summary
from .settings import StreamsSettings

log = logging.getLogger(__name__)

FEATURE_COLUMNS = ("chosen_score", "top_score", "margin", "score_mean", "prompt_chars", "prompt_tokens")
OUTCOME_COLUMNS = ("accepted", "score", "predicted", "cost_usd", "latency_ms")


def call_feature_values(
    scores: dict[str, float], chosen: str | None, prompt: str | None, prompt_tokens: int
) -> tuple[float | None, ...]:
    """Router features of one call in ``FEATURE_COLUMNS`` order (None: unknown)."""
    vals = sorted(scores.values(), reverse=True)
    return (
        scores.get(chosen or ""),
        vals[0] if vals else None,
        vals[0] - vals[1] if len(vals) > 1 else None,
        sum(vals) / len(vals) if vals else None,
        float(len(prompt)) if prompt is not None else None,
        float(prompt_tokens) if prompt_tokens else None,
    )


def call_features(
    scores: dict[str, float], chosen: str | None, prompt: str | None, prompt_tokens: int
) -> dict[str, float | None]:
    """Router features of one call, the input of the evidently data-drift check (None: unknown)."""
    return dict(zip(FEATURE_COLUMNS, call_feature_values(scores, chosen, prompt, prompt_tokens), strict=True))


class FeatureBatch:
    """Router features of a batch of calls of one task, by column: the join publishes one record
    per task and batch, ``{"n": rows, "columns": {column: [values]}}``, to the input-drift agent."""

    __slots__ = ("columns", "n")

    def __init__(self) -> None:
        self.columns: tuple[list[float | None], ...] = tuple([] for _ in FEATURE_COLUMNS)
        self.n = 0

    def add(
        self, scores: dict[str, float], chosen: str | None, prompt: str | None, prompt_tokens: int
    ) -> None:
        values = call_feature_values(scores, chosen, prompt, prompt_tokens)
        for col, v in zip(self.columns, values, strict=True):
            col.append(v)
        self.n += 1

    def record(self) -> dict[str, Any]:
        return {"n": self.n, "columns": dict(zip(FEATURE_COLUMNS, self.columns, strict=True))}


def _retrain_for(alert: AlertEvent, reason: str, now: datetime) -> RetrainRequest:
    """The retrain request a firing alert (or notice) of a task asks for, over its window."""
    return RetrainRequest(
        reason=reason,
        source="streams",
        tasks=[alert.task],
        window_start=alert.window_start,
        window_end=alert.window_end,
        alert_id=alert.alert_id,
        ts=now,
    )


def _outcome_row(o: OutcomeEvent) -> dict[str, float]:
    return {
        "accepted": float(o.accepted),
        "score": o.score,
        "predicted": o.predicted if o.predicted is not None else float("nan"),
        "cost_usd": o.cost_usd,
        "latency_ms": o.latency_ms,
    }


@dataclass
class MonitorResult:
    """What one batch caused: alerts to publish and retrain requests to emit."""

    alerts: list[AlertEvent] = field(default_factory=list)
    retrain: list[RetrainRequest] = field(default_factory=list)
    reports: list[Callable[[], Any]] = field(default_factory=list)

    def write_reports(self) -> None:
        """Write the evidently HTML reports the alerts point to (CPU-bound: run it in a thread)."""
        for job in self.reports:
            try:
                job()
            except Exception:  # a report is evidence, not a reason to lose the alert
                log.exception("could not write a drift report")
        self.reports.clear()


class TaskMonitor:
    """Quality (per task and model), calibration and input-drift detectors for every task.

    Detector state lives in ``state`` (a dict or a changelog-backed table keyed by task), alert
    state in ``alert_store``, the input-drift state that resolving needs (reference window, firing)
    in ``input_store``: a monitor built again on the same stores (after a restart or rebalance)
    carries on where the last one stopped. evidently reports go to ``settings.reports_dir``.
    """

    def __init__(
        self,
        settings: StreamsSettings,
        state: MutableMapping[str, Any],
        alert_store: MutableMapping[str, Any],
        reference: dict[str, dict[str, float]] | None = None,
        write_reports: bool = True,
        defer_reports: bool = False,
        input_store: MutableMapping[str, Any] | None = None,
        cheap_tier: str | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.tracker = AlertTracker(alert_store)
        self.reference = reference or {}
        self.write_reports = write_reports
        self.defer_reports = defer_reports
        self._recent: dict[str, deque[dict[str, float]]] = {}
        self._baseline: dict[str, list[dict[str, float]]] = {}
        self.input_store: MutableMapping[str, Any] = input_store if input_store is not None else {}
        self.cheap_tier = cheap_tier  # the catalog's cheapest tier (the opportunity detector's "cheap")
        self._input: dict[str, InputDrift] = {}  # live detectors; their lasting state: input_store

    # -- quality and calibration (outcomes) -------------------------------------------------
    def on_outcomes_from(
        self,
        task: str,
        items: Sequence[tuple[int, int, Sequence[OutcomeEvent]]],
        now: datetime | None = None,
    ) -> MonitorResult:
        """Feed one task's outcomes as ``(partition, offset, outcomes)`` of its input records, in
        order, skipping the records the detectors' state already holds (a replay after a crash:
        :func:`streams.idempotence.fresh`); the state records the last one fed."""
        outs, mark = fresh(self.state.get(task), items)
        if not outs:
            return MonitorResult()
        return self.on_outcomes(task, outs, now, mark=mark)

    def on_outcomes(
        self,
        task: str,
        outcomes: Sequence[OutcomeEvent],
        now: datetime | None = None,
        mark: tuple[int, int] | None = None,
    ) -> MonitorResult:
        """Feed one task's outcomes (in order); return the alerts and retrain requests caused.
        ``mark``: the input record they end at, kept in the task's state (see :meth:`on_outcomes_from`)."""
        now = now or datetime.now(UTC)
        res = MonitorResult()
        st = dict(self.state.get(task) or {})
        served = [o for o in outcomes if o.mode is not RoutingMode.EXPLORE]  # shadows: evidence only
        self._remember(task, served)
        by_model: dict[str, list[bool]] = {}
        times: dict[str, list[float]] = {}
        for o in served:
            by_model.setdefault(o.chosen_model, []).append(o.accepted)
            times.setdefault(o.chosen_model, []).append(o.ts.timestamp())
        qstates = dict(st.get("quality", {}))
        recovered = False
        for model, accepted in by_model.items():
            det = QualityCusum.from_state(self.settings.quality, qstates.get(model))
            if det.p0 is None and model in self.reference.get(task, {}):
                det.configure(self.reference[task][model])
            for ch in det.update(accepted, times[model]):
                recovered |= ch.kind == "resolve"
                self._emit(res, task, "quality", model, ch, now, outcomes)
            qstates[model] = det.to_state()
        st["quality"] = qstates
        cal = CalibrationDrift.from_state(self.settings.calibration, st.get("calibration"))
        if recovered and not cal.firing:
            # The calibration window still holds the quality incident, which already paged and
            # was resolved: start it afresh rather than page again for the same episode.
            cal = CalibrationDrift(self.settings.calibration)
        pairs = [(o.predicted, float(o.accepted)) for o in outcomes if o.predicted is not None]
        if pairs:
            quality_firing = any(s.get("firing") for s in qstates.values())
            for ch in cal.update([p for p, _ in pairs], [a for _, a in pairs]):
                if ch.kind == "fire" and quality_firing:
                    # Inhibited, as Alertmanager inhibit rules do: the quality alert already pages
                    # for this task and a quality drop always opens a calibration gap.
                    cal.firing = False
                    continue
                self._emit(res, task, "calibration", None, ch, now, outcomes)
            st["calibration"] = cal.to_state()
        if self.settings.opportunity.enabled and self.cheap_tier is not None:
            opp = OpportunityDetector.from_state(
                self.settings.opportunity, self.cheap_tier, st.get("opportunity")
            )
            for change in opp.update(outcomes, now.timestamp()):
                self._emit_opportunity(res, task, change, now, outcomes)
            st["opportunity"] = opp.to_state()
        if self.settings.cache_watch.enabled and any(o.cache_hit for o in outcomes):
            watch = CacheWatch(self.settings.cache_watch, st.get("cache_watch"))
            if (action := watch.update(outcomes)) is not None:
                alert = self.tracker.fire(
                    task,
                    CACHE_DETECTOR,
                    cache_summary(task, action),
                    action.evidence,
                    subject=action.subject,
                    window_start=min(o.ts for o in outcomes),
                    window_end=max(o.ts for o in outcomes),
                    now=now,
                )
                if alert is not None:
                    res.alerts.append(alert)
            st["cache_watch"] = watch.to_state()
        self.state[task] = marked(st, mark)
        return self._finish(res)

    def _emit_opportunity(
        self,
        res: MonitorResult,
        task: str,
        change: Opportunity,
        now: datetime,
        outcomes: Sequence[OutcomeEvent],
    ) -> None:
        """A savings opportunity: an informational notice (never a page) and a retrain request
        with reason ``opportunity``; its resolve when the task routes cheaply again."""
        text = opportunity_summary(task, change)
        if change.kind == "resolve":
            alert = self.tracker.resolve(task, "opportunity", text, change.evidence, now=now)
            if alert is not None:
                res.alerts.append(alert)
            return
        alert = self.tracker.fire(
            task,
            "opportunity",
            text,
            {**change.evidence, "why": change.reason},
            severity="info",
            # the detector's whole window (the exploration evidence before this batch too), so the
            # retrain reads every outcome the decision saw
            window_start=(
                datetime.fromtimestamp(change.window_start, UTC)
                if change.window_start is not None
                else min(o.ts for o in outcomes)
                if outcomes
                else None
            ),
            window_end=max(o.ts for o in outcomes) if outcomes else now,
            now=now,
        )
        if alert is not None:
            res.alerts.append(alert)
            res.retrain.append(_retrain_for(alert, "opportunity", now))

    def _remember(self, task: str, outcomes: Sequence[OutcomeEvent]) -> None:
        size = self.settings.input_drift.reference_size
        base = self._baseline.setdefault(task, [])
        recent = self._recent.setdefault(task, deque(maxlen=size))
        for o in outcomes:
            row = _outcome_row(o)
            if len(base) < size:
                base.append(row)
            recent.append(row)

    # -- input drift (router features of every call) ----------------------------------------
    def add_features(self, task: str, features: Sequence[dict[str, float]] | dict[str, Any]) -> bool:
        """Add a task's call features: rows, or a :class:`FeatureBatch` record (by column). True
        when an evidently check is due (run :meth:`check_input`)."""
        det = self._input.get(task)
        if det is None:
            det = self._input[task] = InputDrift.from_state(
                self.settings.input_drift, FEATURE_COLUMNS, self.input_store.get(task)
            )
        had_reference = det.reference_complete
        if isinstance(features, dict):
            det.add_columns(features["columns"], int(features["n"]))
        else:
            det.add(features)
        if det.reference_complete and not had_reference:  # once per task: the reference is fixed
            self.input_store[task] = det.to_state()
        return det.due()

    def run_input_check(self, task: str) -> InputDriftResult:
        """Run the evidently check of a task: CPU-bound and free of table writes (run it in a thread)."""
        return self._input[task].check()

    def apply_input_check(
        self, task: str, result: InputDriftResult, now: datetime | None = None
    ) -> MonitorResult:
        """Turn a check result into alerts (on the event loop: it writes the alert store)."""
        now = now or datetime.now(UTC)
        res = MonitorResult()
        det = self._input[task]
        ch = det.transition(result)
        if ch is not None:
            self.input_store[task] = det.to_state()
            job = None
            if ch.kind == "fire" and self.write_reports:
                path = self._report_path(task, "input_drift", now)
                job = (
                    self._url(path),
                    lambda: write_report(result.report() if result.report else result.snapshot, path),
                )
            self._emit(res, task, "input_drift", None, ch, now, (), report=job)
        return self._finish(res)

    def check_input(self, task: str, now: datetime | None = None) -> MonitorResult:
        """Check and apply in one go (for callers without an event loop: tests, the benchmark)."""
        return self.apply_input_check(task, self.run_input_check(task), now)

    # -- alerts -----------------------------------------------------------------------------
    def _emit(
        self,
        res: MonitorResult,
        task: str,
        detector: str,
        subject: str | None,
        ch: Change,
        now: datetime,
        outcomes: Sequence[OutcomeEvent],
        report: tuple[str, Callable[[], Any]] | None = None,
    ) -> None:
        if ch.kind == "fire":
            if report is None and self.write_reports:
                report = self._quality_report(task, detector, now)
            report_url = report[0] if report else None
            what = f" of {subject}" if subject else ""
            summary = _summary(task, detector, subject, ch.evidence)
            alert = self.tracker.fire(
                task,
                detector,
                summary,
                ch.evidence,
                subject=subject,
                severity="critical" if detector == "quality" else "warning",
                window_start=_window_start(ch.evidence, outcomes),
                window_end=max(o.ts for o in outcomes) if outcomes else now,
                report_url=report_url,
                now=now,
            )
            if alert is not None:
                res.alerts.append(alert)
                if report:
                    res.reports.append(report[1])
                res.retrain.append(_retrain_for(alert, f"{detector} drift{what} on task {task}", now))
        else:
            alert = self.tracker.resolve(
                task,
                detector,
                f"resolved: {detector} on task {task}" + (f" ({subject})" if subject else ""),
                ch.evidence,
                subject=subject,
                now=now,
            )
            if alert is not None:
                res.alerts.append(alert)

    def _quality_report(
        self, task: str, detector: str, now: datetime
    ) -> tuple[str, Callable[[], Any]] | None:
        """The URL of the task's drift report and the job that writes it (reference vs recent outcomes)."""
        base, recent = self._baseline.get(task), self._recent.get(task)
        if not base or not recent or len(base) < 10 or len(recent) < 10:
            return None
        path, ref, cur = self._report_path(task, detector, now), list(base), list(recent)
        return self._url(path), lambda: drift_report(ref, cur, OUTCOME_COLUMNS, path)

    def _finish(self, res: MonitorResult) -> MonitorResult:
        if not self.defer_reports:
            res.write_reports()
        return res

    def _report_path(self, task: str, detector: str, now: datetime) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
        return self.settings.reports_dir / safe / f"{detector}-{now.strftime('%Y%m%dT%H%M%S%f')}.html"

    def _url(self, path: Path) -> str:
        if self.settings.report_base_url:
            rel = path.relative_to(self.settings.reports_dir)
            return self.settings.report_base_url.rstrip("/") + "/" + rel.as_posix()
        return path.resolve().as_uri()

    def firing(self) -> list[dict[str, Any]]:
        """Alerts currently firing (from the alert store)."""
        return [v for v in self.tracker.store.values() if v.get("status") == AlertStatus.FIRING.value]


def _summary(task: str, detector: str, subject: str | None, ev: dict[str, Any]) -> str:
    if detector == "quality":
        obs = ev.get("observed_acceptance")
        obs_s = f"{obs:.1%}" if obs is not None else "n/a"
        ref = f"reference {ev.get('reference_acceptance'):.1%}"
        if ev.get("reference_learned") and ev.get("learned_acceptance") is not None:
            ref = (
                f"learned reference {ev['learned_acceptance']:.1%} over {ev.get('reference_events')} answers"
                f" (tested against its lower bound {ev.get('reference_acceptance'):.1%})"
            )
        return (
            f"acceptance of {subject} on task {task} dropped: {obs_s} over the last "
            f"{ev.get('events_since_change_point')} labelled answers vs {ref}"
        )
    if detector == "calibration":
        return (
            f"router calibration drift on task {task}: predicted - observed = "
            f"{ev.get('predicted_minus_observed'):+.1%} over {ev.get('events')} answers"
        )
    return f"input drift on task {task}: {ev.get('drifted_share', 0):.0%} of router features drifted"


def _window_start(evidence: dict[str, Any], outcomes: Sequence[OutcomeEvent]) -> datetime | None:
    """Where a drift alert's retrain should start reading: the detector's estimated change point
    (the whole run of evidence since the drop began, not only the batch that tipped it), else the
    batch's first outcome."""
    first = min(o.ts for o in outcomes) if outcomes else None
    cp = evidence.get("change_point_ts")
    if cp is None:
        return first
    at = datetime.fromtimestamp(float(cp), UTC)
    return at if first is None else min(at, first)

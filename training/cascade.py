"""The cascade's answer scorer: P(the cheap model's answer is acceptable) from the answer itself,
and the acceptance table (quality target -> score) a cascade serves with.

Fitted on the benchmark rows that recorded the cheap model's answer and grade; served by
:class:`services.router.cascade.CascadeScorer` (saved with the router by :func:`training.train.train_router`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from services.router.artifact import CascadeSpec
from services.router.calibration import ThresholdTable, fit_table
from services.router.cascade import FEATURE_NAMES, answer_feature_matrix

from .splits import kfold

if TYPE_CHECKING:
    from .train import TrainingSet


def fit_cascade(
    ts: TrainingSet, model: str, *, seed: int = 0, use_embedding: bool = False, c: float = 0.3
) -> tuple[CascadeSpec, dict[str, np.ndarray]] | None:
    """Logistic answer scorer for ``model`` on the rows that recorded its answer and grade.

    By default on the answer features alone: with the prompt embedding too it ranked GSM8K no
    better (APGR lower on three fold seeds) and costs an encoder pass per answer; docs/router.md."""
    from sklearn.linear_model import LogisticRegression

    col = "response:" + model
    if col not in ts.frame or model not in ts.models:
        return None
    y = ts.labels[:, ts.models.index(model)]
    rows = ts.frame[col].notna().to_numpy() & ~np.isnan(y)
    if rows.sum() < 50:
        return None
    x = cascade_design(ts, rows, model, use_embedding=use_embedding)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    clf.fit((x - mean) / std, (y[rows] >= 0.5).astype(int))
    names = [*FEATURE_NAMES, "embedding[384]"] if use_embedding else list(FEATURE_NAMES)
    spec = CascadeSpec(model=model, use_embedding=use_embedding, feature_names=names)
    return spec, {"coef": clf.coef_[0], "intercept": clf.intercept_, "mean": mean, "std": std}


def fit_cascade_table(
    ts: TrainingSet, model: str, strong_model: str, *, folds: int = 5, seed: int = 0
) -> ThresholdTable | None:
    """quality_target -> the answer score at which a cascade accepts ``model``'s answer, fitted on
    out-of-fold answer scores of the rows that graded both models and recorded ``model``'s answer:
    for each target the most accepting score whose quality (accepted: ``model``'s label, else the
    strong model's) still keeps the target, walking from "always escalate"."""
    col = "response:" + model
    if col not in ts.frame or model not in ts.models or strong_model not in ts.models:
        return None
    si, wi = ts.models.index(strong_model), ts.models.index(model)
    rows = ts.frame[col].notna().to_numpy() & ~np.isnan(ts.labels[:, wi]) & ~np.isnan(ts.labels[:, si])
    if rows.sum() < 100:
        return None
    sub = ts.subset(rows)
    score = oof_cascade_scores(sub, model, kfold(sub.frame["prompt_hash"], folds, seed), seed=seed)
    if score is None:
        return None
    # the strong model always qualifies (score 1), the cheap one when its answer scores >= t
    scores = np.stack([np.ones(len(score)), score], axis=1)
    labels = sub.labels[:, [si, wi]]
    return fit_table(scores, labels, np.array([2.0, 1.0]), [strong_model, model], 0, rule="absolute")


def oof_cascade_scores(ts: TrainingSet, model: str, folds: np.ndarray, *, seed: int = 0) -> np.ndarray | None:
    """Out-of-fold P(``model``'s answer acceptable) per row, each fold scored by a scorer fitted on
    the others and applied as serving applies it (:class:`services.router.cascade.CascadeScorer`)."""
    from services.router.cascade import CascadeScorer

    out = np.full(len(ts.frame), np.nan)
    for f in np.unique(folds):
        fit = fit_cascade(ts.subset(folds != f), model, seed=seed)
        if fit is None:
            return None
        spec, params = fit
        test = folds == f
        part = ts.frame[test]
        scorer = CascadeScorer(model, params, use_embedding=spec.use_embedding)
        emb = ts.embeddings[test] if spec.use_embedding else None
        out[test] = scorer.scores(part["prompt"].tolist(), part["response:" + model].tolist(), emb)
    return out


def cascade_design(
    ts: TrainingSet, rows: np.ndarray, model: str, *, use_embedding: bool = False
) -> np.ndarray:
    f = ts.frame[rows]
    feats = answer_feature_matrix(f["prompt"].tolist(), f["response:" + model].tolist())
    return np.concatenate([feats, ts.embeddings[rows]], axis=1) if use_embedding else feats

"""The distillation artefact of a loop run: the fine-tuning JSONL for the cheap tier, with counts.

Every run of the loop writes ``<run dir>/distillation/`` and logs it to the run's MLflow run under
``distillation/``:

- ``finetune.jsonl``: the strong model's judge-accepted answers to the run's hard queries, one
  OpenAI chat fine-tuning example per line (empty when distillation exported none);
- ``summary.json``: examples, examples per task, estimated tokens, what distillation spent (USD,
  calls), the teacher and the target model, the file's SHA-256.

The counts are also MLflow metrics (``distillation.examples``, ``distillation.tokens_estimate``,
``distillation.spent_usd``, ``distillation.examples.<task>``) and are kept in the run state, so
``switchyard train status`` shows them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from services.contracts.settings import MLflowSettings

log = logging.getLogger(__name__)

ARTIFACT_PATH = "distillation"
FILE = "finetune.jsonl"
SUMMARY = "summary.json"


def _tokens(path: Path) -> int:
    from ..distill import estimate_finetune_tokens

    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            total += estimate_finetune_tokens(json.loads(line)["messages"])
    return total


def write_distillation(
    run_dir: Path,
    report: dict[str, Any],
    *,
    run_id: str,
    tasks: list[str],
    strong_model: str,
    cheap_model: str,
) -> tuple[Path, dict[str, Any]]:
    """``<run_dir>/distillation/`` (the JSONL and ``summary.json``) from the distil stage's report;
    returns the folder and the summary. Counts are taken from the file itself."""
    out = run_dir / ARTIFACT_PATH
    out.mkdir(parents=True, exist_ok=True)
    dst = out / FILE
    src = report.get("finetune_path")
    if src and Path(src).is_file():
        shutil.copyfile(src, dst)
    else:
        dst.write_text("", encoding="utf-8")
    raw = dst.read_bytes()
    examples = sum(1 for line in raw.decode("utf-8").splitlines() if line.strip())
    spent = float(report.get("spent_usd") or 0.0)
    summary = {
        "format": "openai-chat-jsonl",
        "file": f"{ARTIFACT_PATH}/{FILE}",
        "examples": examples,
        "per_task": dict(report.get("finetune_per_task") or {}),
        "tokens_estimate": _tokens(dst),
        "tokens_method": "about 4 characters a token, plus 4 per message and 2 per example",
        "spent_usd": spent,
        "usd_per_example": spent / examples if examples else None,
        "calls": int(report.get("calls") or 0),
        "hard_queries": int(report.get("hard_queries") or 0),
        "labelled_queries": int(report.get("labelled_queries") or 0),
        "labels": int(report.get("labels") or 0),
        "teacher_model": strong_model,
        "target_model": cheap_model,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "run_id": run_id,
        "drift_tasks": list(tasks),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return out, summary


def distillation_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics of a summary (examples, tokens, spend, examples per task)."""
    out = {
        "distillation.examples": float(summary["examples"]),
        "distillation.tokens_estimate": float(summary["tokens_estimate"]),
        "distillation.spent_usd": float(summary["spent_usd"]),
    }
    for task, n in summary["per_task"].items():
        out[f"distillation.examples.{task}"] = float(n)
    return out


def log_distillation(settings: MLflowSettings, mlflow_run_id: str, folder: Path) -> str:
    """Log ``folder`` (the JSONL and its summary) to the MLflow run under ``distillation/``;
    returns the artefact's ``runs:/`` URI. MLflow errors surface as ``RegistryError``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ..registry import RegistryError

    try:
        MlflowClient(tracking_uri=settings.tracking_uri).log_artifacts(
            mlflow_run_id, str(folder), artifact_path=ARTIFACT_PATH
        )
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {settings.tracking_uri}: {exc.message}") from exc
    except OSError as exc:
        raise RegistryError(f"MLflow at {settings.tracking_uri} is unreachable: {exc}") from exc
    uri = f"runs:/{mlflow_run_id}/{ARTIFACT_PATH}/{FILE}"
    log.info("distillation artefact %s", uri)
    return uri

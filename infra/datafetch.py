"""Fetch the benchmark files from their public sources (../shared/data/README.md), or check a
local copy. Offline machines point ``SWITCHYARD_DATA_DIR`` at a directory that already has them."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

ROUTELLM = "https://raw.githubusercontent.com/lm-sys/RouteLLM/0b64fda/routellm/evals"
ROUTERDC = "https://raw.githubusercontent.com/shuhao02/RouterDC/0e63989/datasets/routerbench_zs"

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology "
    "college_chemistry college_computer_science college_mathematics college_medicine college_physics "
    "computer_security conceptual_physics econometrics electrical_engineering elementary_mathematics "
    "formal_logic global_facts high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_european_history high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_mathematics high_school_microeconomics high_school_physics "
    "high_school_psychology high_school_statistics high_school_us_history high_school_world_history "
    "human_aging human_sexuality international_law jurisprudence logical_fallacies machine_learning "
    "management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition "
    "philosophy prehistory professional_accounting professional_law professional_medicine "
    "professional_psychology public_relations security_studies sociology us_foreign_policy virology "
    "world_religions"
).split()


def sources() -> dict[str, str]:
    """Relative path in the data directory -> public URL."""
    out = {f"routellm/mmlu/mmlu_{s}.csv": f"{ROUTELLM}/mmlu/responses/mmlu_{s}.csv" for s in MMLU_SUBJECTS}
    out["routellm/mmlu/contaminated_prompts.jsonl"] = f"{ROUTELLM}/mmlu/contaminated_prompts.jsonl"
    out["routellm/gsm8k/gsm8k_responses.csv"] = f"{ROUTELLM}/gsm8k/gsm8k_responses.csv"
    out["routellm/gsm8k/contaminated_prompts.jsonl"] = f"{ROUTELLM}/gsm8k/contaminated_prompts.jsonl"
    for task in ("arc_challenge", "mbpp", "winograde"):
        for split in ("train", "test"):
            out[f"routerbench/{task}_{split}.csv"] = f"{ROUTERDC}/{task}_{split}.csv"
    return out


def present(data_dir: Path) -> dict[str, int]:
    """Count the benchmark files present, by family."""
    d = Path(data_dir)
    return {
        "mmlu subjects": len(list((d / "routellm" / "mmlu").glob("mmlu_*.csv"))),
        "gsm8k": int((d / "routellm" / "gsm8k" / "gsm8k_responses.csv").exists()),
        "routerbench files": len(list((d / "routerbench").glob("*_*.csv"))),
    }


def fetch(data_dir: Path, timeout_s: float = 60.0) -> tuple[int, list[str]]:
    """Download every missing file; returns (downloaded, failures). Existing files are kept."""
    data_dir = Path(data_dir)
    done, failed = 0, []
    for rel, url in sources().items():
        target = data_dir / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp, tmp.open("wb") as out:  # noqa: S310
                out.write(resp.read())
            tmp.replace(target)
            done += 1
            log.info("fetched %s", rel)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            failed.append(f"{rel}: {exc}")
    return done, failed

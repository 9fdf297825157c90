"""Policy lint of the rendered manifests with kube-score (built from the Go module proxy).

kube-score checks the built-in workload kinds (Deployments, CronJobs, Jobs, Services, PDBs,
NetworkPolicies): security contexts, probes, resources, PDB and NetworkPolicy coverage. Every
finding fails the check unless ``k8s/lint-waivers.yaml`` waives it, and each waiver carries its
reason (a waiver without one is itself an error)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

WAIVERS = Path(__file__).resolve().parents[1] / "k8s" / "lint-waivers.yaml"
KUBERNETES_VERSION = "v1.32"
OPTIONAL_TESTS = ("container-seccomp-profile",)


def load_waivers(path: Path = WAIVERS) -> list[dict[str, Any]]:
    """The waivers: ``{test, objects?, reason}``; ``objects`` (``Kind/name``) narrows a waiver."""
    waivers = (yaml.safe_load(path.read_text()) or {}).get("waivers", [])
    for w in waivers:
        if not str(w.get("reason", "")).strip() or not w.get("test"):
            raise ValueError(f"{path.name}: every waiver needs a test and a reason: {w}")
    return waivers


def _waived(waivers: list[dict[str, Any]], test: str, kind: str, name: str) -> bool:
    return any(w["test"] == test and (not w.get("objects") or f"{kind}/{name}" in w["objects"])
               for w in waivers)


def lint(kube_score: Path | None, docs: list[dict[str, Any]]) -> tuple[list[str], int]:
    """kube-score findings not waived (as error lines) and how many were waived."""
    if kube_score is None:
        return ["kube-score is not available"], 0
    waivers = load_waivers()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
        f.flush()
        cmd = [str(kube_score), "score", "-o", "json", "--kubernetes-version", KUBERNETES_VERSION,
               *(a for t in OPTIONAL_TESTS for a in ("--enable-optional-test", t)), f.name]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    try:
        objects = json.loads(res.stdout)
    except json.JSONDecodeError:
        return [f"kube-score failed ({res.returncode}): {res.stderr[-1000:]}"], 0
    findings, waived = [], 0
    for obj in objects:
        kind, name = obj["type_meta"]["kind"], obj["object_meta"]["name"]
        for check in obj["checks"]:
            if check["skipped"] or check["grade"] >= 10:
                continue
            test = check["check"]["id"]
            if _waived(waivers, test, kind, name):
                waived += 1
                continue
            why = "; ".join(f"{c.get('path') or ''} {c['summary']}".strip() for c in check["comments"] or [])
            findings.append(f"{kind} {name}: kube-score {test}: {why}")
    return findings, waived

"""`make k8s-check` for real: every overlay rendered with kustomize validates against the real
schemas (Kubernetes, KubeRay, Prometheus operator, KEDA, Strimzi, Ray Serve) and passes the policy
lint, and the rendered overlays set what they promise. Tools come from the Go proxy, Maven Central
and PyPI once, cached in
<state_dir>/k8s-tools (the first run builds them: about a minute or two)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import k8s_check, k8s_lint

pytestmark = pytest.mark.integration

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tools() -> k8s_check.Tools:
    state = Path(os.environ.get("SWITCHYARD_STATE_DIR", ROOT / ".state"))
    state = state if state.is_absolute() else ROOT / state
    try:
        return k8s_check.ensure_tools(state / "k8s-tools")
    except k8s_check.CheckError as exc:
        if IN_CI:
            pytest.fail(f"k8s tools unavailable: {exc}", pytrace=False)
        pytest.skip(f"k8s tools unavailable: {exc}")


@pytest.fixture(scope="module")
def rendered(tools: k8s_check.Tools) -> dict[str, list[dict[str, Any]]]:
    return {p.name: k8s_check.render(tools, p) for p in k8s_check.overlays()}


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_every_overlay_and_job_template_validates(tools: k8s_check.Tools,
                                                   rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert {"dev", "prod"} <= set(rendered)
    for name, docs in rendered.items():
        result = k8s_check.check_documents(tools, name, docs)
        assert result.ok, f"{name}: " + "\n".join(result.errors)
        # nothing may be silently skipped: every kind below has a schema
        assert {"RayService", "Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "Deployment", "CronJob",
                "Service", "PrometheusRule", "AlertmanagerConfig", "Secret", "ConfigMap", "ScaledObject",
                "TriggerAuthentication", "NetworkPolicy", "PodDisruptionBudget"} <= set(result.kinds)
        assert any(n.endswith(", 0 skipped") for n in result.notes), result.notes  # every kind has a schema
        findings, _ = k8s_lint.lint(tools.kube_score, docs)
        assert not findings, f"{name}: " + "\n".join(findings)
    result = k8s_check.check_documents(tools, "jobs", k8s_check.job_templates())
    assert result.ok and result.kinds == {"Job": 2}, result.errors  # train-run, first-router


def test_the_check_catches_broken_manifests(tools: k8s_check.Tools,
                                            rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = rendered["prod"]
    cases = {
        "Deployment": lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePolicy="Always"),
        "RayService": lambda d: d["spec"]["rayClusterConfig"].update(workerGroupSpec=[]),
        "PrometheusRule": lambda d: d["spec"]["groups"][0]["rules"][0].update(severity="page"),
        "KafkaTopic": lambda d: d["spec"].update(partitions="six"),
        "Kafka": lambda d: d["spec"]["kafka"]["listeners"][0].update(type="public"),
        "KafkaNodePool": lambda d: d["spec"].update(replica=3),  # unknown field
        "KafkaUser": lambda d: d["spec"]["authorization"]["acls"][0].update(operations=["Produce"]),
        "ScaledObject": lambda d: d["spec"].update(maxReplicas=6),
    }
    broken = []
    for kind, break_it in cases.items():
        doc = copy.deepcopy(next(d for d in base if d["kind"] == kind))
        break_it(doc)
        broken.append(doc)
    result = k8s_check.check_documents(tools, "broken", broken)
    for kind in cases:
        assert any(e.startswith(f"{kind} ") for e in result.errors), f"{kind}: {result.errors}"
    assert not any(e.startswith(("ConfigMap", "Secret", "Service ")) for e in result.errors)
    # a Serve config naming a deployment the code does not have
    ray = copy.deepcopy(_one(base, "RayService"))
    ray["spec"]["serveConfigV2"] = ray["spec"]["serveConfigV2"].replace("RouterDeployment", "Router")
    assert any("'Router'" in e for e in k8s_check.check_serve_config(ray))
    # a user_config in the Serve config would pin one deployment apart from the alias both follow
    ray = copy.deepcopy(_one(base, "RayService"))
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    router = next(d for d in serve["applications"][0]["deployments"] if d["name"] == "RouterDeployment")
    router["user_config"] = {"router_ref": "/tmp/r"}
    ray["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    assert any("RouterDeployment sets user_config" in e for e in k8s_check.check_serve_config(ray))
    # a Strimzi resource on the removed v1beta2 API has no schema: an error, not a skip
    old = copy.deepcopy(_one(base, "KafkaTopic", "switchyard.calls.v1"))
    old["apiVersion"] = "kafka.strimzi.io/v1beta2"
    assert not k8s_check.check_documents(tools, "old-api", [old]).ok


def test_the_lint_catches_a_pod_without_security_context(
        tools: k8s_check.Tools, rendered: dict[str, list[dict[str, Any]]]) -> None:
    streams = copy.deepcopy(_one(rendered["prod"], "Deployment", "switchyard-streams"))
    del streams["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    findings, _ = k8s_lint.lint(tools.kube_score, [streams])
    assert any("container-security-context-readonlyrootfilesystem" in f for f in findings), findings


def test_prod_runs_router_replicas_on_gpus_with_replication_three(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["prod"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"switchyard"}
    ray = _one(docs, "RayService")
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    router = next(d for d in serve["applications"][0]["deployments"] if d["name"] == "RouterDeployment")
    assert router["ray_actor_options"]["num_gpus"] == 1
    assert router["autoscaling_config"]["min_replicas"] >= 2
    groups = {g["groupName"]: g for g in ray["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) == 1
    assert groups["gpu"]["maxReplicas"] >= router["autoscaling_config"]["max_replicas"]
    for topic in (d for d in docs if d["kind"] == "KafkaTopic"):
        assert topic["spec"]["replicas"] == 3, topic["metadata"]["name"]
    assert _one(docs, "KafkaNodePool")["spec"]["replicas"] == 3
    assert _one(docs, "Kafka")["spec"]["kafka"]["config"]["min.insync.replicas"] == 2
    env = _one(docs, "ConfigMap", "switchyard-env")["data"]
    assert env["SWITCHYARD_STREAMS_REPLICATION"] == "3"
    assert env["SWITCHYARD_GATEWAY_REDACT_PROMPTS"] == "true"
    assert _one(docs, "ScaledObject")["spec"]["minReplicaCount"] == 3
    train = _one(docs, "Deployment", "switchyard-train-worker")
    limits = train["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 1


def test_dev_is_single_broker_cpu_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["dev"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"switchyard-dev"}
    assert _one(docs, "KafkaNodePool")["spec"]["replicas"] == 1
    assert all(d["spec"]["replicas"] == 1 for d in docs if d["kind"] == "KafkaTopic")
    assert _one(docs, "ConfigMap", "switchyard-env")["data"]["SWITCHYARD_STREAMS_REPLICATION"] == "1"
    ray = _one(docs, "RayService")
    assert "nvidia.com/gpu" not in yaml.safe_dump(ray)
    assert _one(docs, "CronJob")["spec"]["suspend"] is True
    assert _one(docs, "ScaledObject")["spec"]["maxReplicaCount"] == 2


_REF_KEYS = (("configMapRef", "ConfigMap"), ("secretRef", "Secret"),
             ("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret"))


def _references(node: Any) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap/Secret a resource refers to."""
    found: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        found |= {(kind, node[key]["name"]) for key, kind in _REF_KEYS if key in node}
        for v in node.values():
            found |= _references(v)
    elif isinstance(node, list):
        for v in node:
            found |= _references(v)
    return found


def _secret_volumes(node: Any) -> set[tuple[str, str]]:
    """("Secret", name) of every secret volume and TriggerAuthentication secret reference."""
    found: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
            found.add(("Secret", node["secret"]["secretName"]))
        for key, kind in (("secretTargetRef", "Secret"), ("configMapTargetRef", "ConfigMap")):
            refs = node.get(key)
            found |= {(kind, ref["name"]) for ref in refs} if isinstance(refs, list) else set()
        for v in node.values():
            found |= _secret_volumes(v)
    elif isinstance(node, list):
        for v in node:
            found |= _secret_volumes(v)
    return found


def test_workloads_reference_only_configmaps_and_secrets_that_exist(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered.items():
        have = {(d["kind"], d["metadata"]["name"]) for d in docs}
        # Secrets Strimzi writes: one per KafkaUser (its password) and the cluster CA certificate
        have |= {("Secret", d["metadata"]["name"]) for d in docs if d["kind"] == "KafkaUser"}
        have |= {("Secret", f"{d['metadata']['name']}-cluster-ca-cert") for d in docs if d["kind"] == "Kafka"}
        wanted = _references(docs) | _secret_volumes(docs)
        assert wanted and wanted <= have, f"{name}: missing {wanted - have}"

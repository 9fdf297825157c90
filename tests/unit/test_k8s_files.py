"""The Kubernetes manifests as files: the generated topics are up to date, the Serve configs say
what each overlay promises, the secrets hold placeholders only, the CRD converter is strict.
(Rendering with kustomize and schema validation: tests/integration/test_k8s_manifests.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.k8s_check import _kind_file, crd_to_json_schemas
from infra.k8s_topics import render_topics
from services.contracts.topics import TOPICS

K8S = Path(__file__).resolve().parents[2] / "k8s"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _serve_config(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def _deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    (app,) = config["applications"]
    return next(d for d in app["deployments"] if d["name"] == name)


def test_committed_topics_file_is_the_generators_output() -> None:
    committed = (K8S / "base" / "kafka-topics.yaml").read_text()
    assert committed == render_topics(), (
        "k8s/base/kafka-topics.yaml is stale: run `switchyard topics k8s --out k8s/base/kafka-topics.yaml`"
    )


def test_one_kafka_topic_per_definition_with_its_settings() -> None:
    docs = _docs(K8S / "base" / "kafka-topics.yaml")
    by_name = {d["spec"]["topicName"]: d for d in docs}
    assert set(by_name) == {t.name for t in TOPICS}
    for spec in TOPICS:
        topic = by_name[spec.name]
        assert topic["kind"] == "KafkaTopic"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "switchyard"
        assert topic["spec"]["partitions"] == spec.partitions
        assert topic["spec"]["replicas"] == spec.replication
        assert topic["spec"]["config"] == spec.configs()


def test_topics_follow_the_kafka_cluster_name_in_the_base() -> None:
    kafka = next(d for d in _docs(K8S / "base" / "kafka.yaml") if d["kind"] == "Kafka")
    pool = next(d for d in _docs(K8S / "base" / "kafka.yaml") if d["kind"] == "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    for topic in _docs(K8S / "base" / "kafka-topics.yaml"):
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    env = next(d for d in _docs(K8S / "base" / "config.yaml") if d["kind"] == "ConfigMap")
    bootstrap = env["data"]["SWITCHYARD_KAFKA_BOOTSTRAP"]
    assert bootstrap.startswith(f"{kafka['metadata']['name']}-kafka-bootstrap:")


def test_prod_router_replicas_ask_for_one_gpu_each_and_autoscale() -> None:
    patch = yaml.safe_load((K8S / "overlays" / "prod" / "patches" / "rayservice-gpu.yaml").read_text())
    serve = next(op["value"] for op in patch if op["path"] == "/spec/serveConfigV2")
    config = _serve_config(serve)
    router = _deployment(config, "RouterDeployment")
    assert router["ray_actor_options"]["num_gpus"] == 1
    assert router["num_replicas"] == "auto"
    assert router["autoscaling_config"]["max_replicas"] > router["autoscaling_config"]["min_replicas"] >= 1
    assert config["applications"][0]["args"]["router_num_gpus"] == 1
    assert router["user_config"]["router_ref"] == "models:/switchyard-router@champion"
    gpu_group = next(op["value"] for op in patch if op["path"].endswith("/workerGroupSpecs/-"))
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 1
    assert gpu_group["maxReplicas"] >= router["autoscaling_config"]["max_replicas"]


def test_base_serve_config_runs_the_gateway_builder_on_cpu() -> None:
    ray = next(d for d in _docs(K8S / "base" / "rayservice.yaml") if d["kind"] == "RayService")
    config = _serve_config(ray["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == "services.gateway.deployments:build_app"
    assert "num_gpus" not in _deployment(config, "RouterDeployment")["ray_actor_options"]
    assert app["args"]["router_num_gpus"] == 0
    env = next(d for d in _docs(K8S / "base" / "config.yaml") if d["kind"] == "ConfigMap")["data"]
    router_ref = _deployment(config, "RouterDeployment")["user_config"]["router_ref"]
    assert router_ref == env["SWITCHYARD_GATEWAY_ROUTER_REF"]


def test_dev_overlay_drops_replication_to_one() -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / "dev" / "kustomization.yaml").read_text())
    patches = [p for p in kustomization["patches"] if "patch" in p]
    by_kind = {p["target"]["kind"]: yaml.safe_load(p["patch"]) for p in patches}
    assert {"op": "replace", "path": "/spec/replicas", "value": 1} in by_kind["KafkaTopic"]
    assert {"op": "replace", "path": "/spec/replicas", "value": 1} in by_kind["KafkaNodePool"]
    config = next(op["value"] for op in by_kind["Kafka"] if op["path"] == "/spec/kafka/config")
    assert config["min.insync.replicas"] == 1 and config["default.replication.factor"] == 1


def test_secret_templates_hold_placeholders_only() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = [K8S / "base" / f for g in kustomization["secretGenerator"] for f in g["envs"]]
    assert files
    for f in files:
        for line in f.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
            placeholder = value in {"CHANGE_ME", "[]"} or "CHANGE_ME" in value
            assert placeholder, f"{f.name}: {key} holds a real-looking value"


def test_provider_key_secret_names_the_catalog_env_vars() -> None:
    from services.catalog import load_catalog

    env_file = (K8S / "base" / "secrets" / "provider-keys.env").read_text()
    keys = {line.partition("=")[0] for line in env_file.splitlines() if line.strip()}
    assert {p.api_key_env for p in load_catalog(None).providers if p.api_key_env} <= keys


def test_crd_conversion_rejects_unknown_fields_and_accepts_int_or_string() -> None:
    crd = {
        "spec": {
            "names": {"kind": "RayService"},
            "versions": [
                {"name": "v1", "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {
                            "port": {"x-kubernetes-int-or-string": True, "type": "string"},
                            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                     "properties": {"a": {"type": "string"}}},
                        }},
                    },
                }}},
                {"name": "v1alpha1", "schema": {"openAPIV3Schema": {"type": "object"}}},
            ],
        }
    }
    schemas = crd_to_json_schemas(crd)
    assert set(schemas) == {"rayservice_v1.json", "rayservice_v1alpha1.json"}
    root = schemas["rayservice_v1.json"]
    assert root["additionalProperties"] is False
    spec = root["properties"]["spec"]
    assert spec["additionalProperties"] is False
    assert spec["properties"]["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "additionalProperties" not in spec["properties"]["free"]


@pytest.mark.parametrize(
    ("api_version", "kind", "expected"),
    [("apps/v1", "Deployment", "deployment-apps-v1.json"), ("v1", "Secret", "secret-v1.json"),
     ("batch/v1", "CronJob", "cronjob-batch-v1.json"),
     ("networking.k8s.io/v1", "Ingress", "ingress-networking-v1.json")],
)
def test_builtin_schema_file_names_follow_kubeconform(api_version: str, kind: str, expected: str) -> None:
    assert _kind_file({"apiVersion": api_version, "kind": kind}) == expected

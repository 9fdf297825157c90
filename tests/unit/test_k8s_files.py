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
    assert "user_config" not in router  # the replicas follow the ConfigMap's alias (base test)
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
    # every replica follows the alias of the ConfigMap (the builder's user_config), none pinned here
    assert all("user_config" not in _deployment(config, n) for n in ("RouterDeployment", "ChatIngress"))
    assert env["SWITCHYARD_GATEWAY_ROUTER_REF"] == "models:/switchyard-router@champion"
    assert float(env["SWITCHYARD_GATEWAY_ROUTER_POLL_S"]) > 0
    assert env["SWITCHYARD_TRAIN_GATEWAY_URL"].startswith(f"http://{ray['metadata']['name']}-serve-svc:")


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


# --- Strimzi v1, Kafka auth, KEDA, security, Ray GCS fault tolerance, dashboard ------------------

def _base_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [d for f in kustomization["resources"] for d in _docs(K8S / "base" / f)]


def _pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template a workload or RayService holds."""
    name = f"{doc['kind']} {doc['metadata'].get('name') or doc['metadata'].get('generateName')}"
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "Job"):
        return [(name, spec["template"]["spec"])]
    if doc["kind"] == "CronJob":
        return [(name, spec["jobTemplate"]["spec"]["template"]["spec"])]
    if doc["kind"] == "RayService":
        cluster = spec["rayClusterConfig"]
        groups = [("head", cluster["headGroupSpec"])]
        groups += [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
        return [(f"{name} {group}", g["template"]["spec"]) for group, g in groups]
    return []


def _workloads() -> list[dict[str, Any]]:
    docs = _base_docs() + _docs(K8S / "jobs" / "train-run.yaml") + _docs(K8S / "jobs" / "first-router.yaml")
    patch = yaml.safe_load((K8S / "overlays" / "prod" / "patches" / "rayservice-gpu.yaml").read_text())
    gpu_group = next(op["value"] for op in patch if op["path"].endswith("/workerGroupSpecs/-"))
    docs.append({"kind": "Job", "metadata": {"name": "prod-gpu-group"},
                 "spec": {"template": gpu_group["template"]}})
    return docs


def test_strimzi_resources_use_the_v1_api_and_a_kafka_the_operator_ships() -> None:
    import re

    strimzi = [d for d in _base_docs() if d["apiVersion"].startswith("kafka.strimzi.io/")]
    assert {d["kind"] for d in strimzi} == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
    assert {d["apiVersion"] for d in strimzi} == {"kafka.strimzi.io/v1"}
    pom = (K8S.parent / "infra" / "kafka" / "pom.xml").read_text()
    stack = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)  # type: ignore[union-attr]
    kafka = next(d for d in strimzi if d["kind"] == "Kafka")
    cluster = kafka["spec"]["kafka"]["version"]
    # the newest Kafka Strimzi 1.2.0 ships (4.3.1): the same major version as the local stack's
    # 4.4, never newer (make k8s-check fails a version the pinned operator does not ship)
    assert cluster == "4.3.1" and cluster.split(".")[0] == stack.split(".")[0]
    assert tuple(map(int, cluster.split("."))) <= tuple(map(int, stack.split(".")))


def test_kafka_listener_authenticates_and_each_client_is_a_kafka_user() -> None:
    docs = _base_docs()
    kafka = next(d for d in docs if d["kind"] == "Kafka")
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert all(lst["tls"] and lst["authentication"]["type"] == "scram-sha-512" for lst in listeners)
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    users = {d["metadata"]["name"] for d in docs if d["kind"] == "KafkaUser"}
    assert {"switchyard-gateway", "switchyard-streams", "switchyard-training", "switchyard-keda"} <= users
    env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "switchyard-env")
    env = env["data"]
    assert env["SWITCHYARD_KAFKA_BOOTSTRAP"].endswith(f":{listeners[0]['port']}")
    for doc in _workloads():
        for where, pod in _pod_specs(doc):
            for c in pod["containers"]:
                sources = {e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])}
                if "switchyard-env" not in sources:
                    continue  # MLflow, Valkey: not Kafka clients
                env_vars = {e["name"]: e for e in c.get("env", [])}
                user = env_vars["SWITCHYARD_KAFKA_SASL_USERNAME"]["value"]
                assert user in users, where
                ref = env_vars["SWITCHYARD_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": user, "key": "password"}, where
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                assert env["SWITCHYARD_KAFKA_SSL_CAFILE"].rsplit("/", 1)[0] in mounts, where


def test_streams_autoscaling_is_bounded_by_the_calls_partitions() -> None:
    from services.contracts.topics import CALLS
    from streams.settings import StreamsSettings

    scaled = next(d for d in _docs(K8S / "base" / "streams-autoscaling.yaml") if d["kind"] == "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka" and trigger["metadata"]["topic"] == CALLS.name
    assert scaled["spec"]["maxReplicaCount"] == CALLS.partitions
    app_id = StreamsSettings.model_fields["app_id"].default
    assert trigger["metadata"]["consumerGroup"] == app_id
    deployment = next(d for d in _docs(K8S / "base" / "streams-worker.yaml") if d["kind"] == "Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the ScaledObject owns the replica count"


def test_every_pod_runs_non_root_with_seccomp_and_no_capabilities() -> None:
    checked = 0
    for doc in _workloads():
        for where, pod in _pod_specs(doc):
            checked += 1
            sc = pod["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault", where
            for c in pod["containers"]:
                csc = c["securityContext"]
                assert csc["capabilities"]["drop"] == ["ALL"], where
                assert csc["allowPrivilegeEscalation"] is False, where
                assert csc["readOnlyRootFilesystem"] is True, where
                assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, f"{where}: no writable /tmp"
    assert checked >= 8


def test_gateway_spool_is_a_volume_per_pod_on_the_workers() -> None:
    docs = _workloads()
    ray = next(d for d in docs if d["kind"] == "RayService")
    groups = list(ray["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    groups.append(next(d for d in docs if d["metadata"].get("name") == "prod-gpu-group")["spec"])
    claims = {d["metadata"]["name"] for d in _base_docs() if d["kind"] == "PersistentVolumeClaim"}
    for group in groups:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        spool = env["SWITCHYARD_GATEWAY_SPOOL_DIR"]["value"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == spool)
        assert mount["subPathExpr"] == "$(POD_NAME)"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_ray_gcs_fault_tolerance_uses_the_redis_service() -> None:
    docs = _base_docs()
    ray = next(d for d in docs if d["kind"] == "RayService")
    # KubeRay rejects the ray.io/ft-enabled annotation together with gcsFaultToleranceOptions.
    assert "ray.io/ft-enabled" not in (ray["metadata"].get("annotations") or {})
    ft = ray["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    host, _, port = ft["redisAddress"].partition(":")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "switchyard-redis"


def test_pod_disruption_budgets_cover_streams_mlflow_and_gateway_workers() -> None:
    docs = _base_docs()
    selectors = [d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert {"app.kubernetes.io/name": "switchyard-streams"} in selectors
    assert {"app.kubernetes.io/name": "mlflow"} in selectors
    ray = next(d for d in docs if d["kind"] == "RayService")
    worker_labels = ray["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    assert any(s.items() <= worker_labels.items() for s in selectors)


def test_network_policies_deny_by_default() -> None:
    policies = [d for d in _base_docs() if d["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["spec"]["podSelector"] == {})
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]


def test_lint_waivers_each_have_a_reason() -> None:
    from infra.k8s_lint import load_waivers

    waivers = load_waivers()
    assert waivers and all(len(w["reason"].split()) >= 8 for w in waivers)


def _exported_metric_names() -> set[str]:
    """Every series name Prometheus gets: the gateway's as Ray's metrics agents export them for the
    whole fleet (``ray_switchyard_*``, one series per ingress replica; a replica's own /metrics is
    not scraped), the streams worker's from its /metrics."""
    from services.gateway.metrics import GatewayMetrics, fleet_names
    from streams.metrics import StreamMetrics

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("_sum", "_count", "_created")}
    names: set[str] = fleet_names(GatewayMetrics())
    for family in StreamMetrics().registry.collect():
        names |= {family.name + s for s in suffixes[family.type]}
    return names


_PROMQL_GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                 "unless", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, ranges, grouping and function
    names removed)."""
    import re

    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(_PROMQL_GROUPING, "", text)
    idents = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\()?", text)
    return {name for name, call in idents if not call and name.lower() not in _PROMQL_WORDS}


def test_grafana_dashboard_queries_only_metrics_the_code_exports() -> None:
    import json

    dashboard = json.loads((K8S / "base" / "monitoring" / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    exported = _exported_metric_names()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            unknown = names - exported
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not exported by the code"
            used |= names
    assert any(n.startswith("switchyard_streams_") for n in used)
    assert any(n.startswith("ray_switchyard_request") for n in used)
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["switchyard.json=monitoring/grafana-dashboard.json"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}


def test_promql_metric_names_ignores_labels_functions_and_grouping() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{model="x",le!="1"}[5m]))) '
            '/ ignoring(model) group_left sum(b_total) > 1e-9')
    assert promql_metric_names(expr) == {"a_bucket", "b_total"}


def test_alert_rules_query_only_metrics_the_code_exports() -> None:
    monitoring = _docs(K8S / "base" / "monitoring.yaml")
    rules = next(d for d in monitoring if d["kind"] == "PrometheusRule")
    exported = _exported_metric_names() | {"up"}
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            unknown = promql_metric_names(rule["expr"]) - exported
            assert not unknown, f"{rule['alert']}: {sorted(unknown)} not exported by the code"


def test_gateway_metrics_are_scraped_from_every_ray_pod_metrics_port() -> None:
    # each Ray pod's metrics agent exports the metrics of the replicas on that pod: all are scraped
    monitoring = _docs(K8S / "base" / "monitoring.yaml")
    pod_monitor = next(d for d in monitoring if d["kind"] == "PodMonitor")
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    cluster = next(d for d in _base_docs() if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    patch = yaml.safe_load((K8S / "overlays" / "prod" / "patches" / "rayservice-gpu.yaml").read_text())
    gpu = next(op["value"] for op in patch if op["path"].endswith("/workerGroupSpecs/-"))
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"], gpu]:
        assert selector.items() <= group["template"]["metadata"]["labels"].items()
        (container,) = group["template"]["spec"]["containers"]
        assert {"name": "metrics", "containerPort": 8080} in container["ports"], container["name"]


def test_ratelimit_store_is_shared_by_the_gateway_pods_only() -> None:
    from urllib.parse import urlsplit

    from services.gateway.ratelimit import check_store_url

    docs = _base_docs()
    env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "switchyard-env")
    url = urlsplit(check_store_url(env["data"]["SWITCHYARD_GATEWAY_RATE_LIMIT_STORAGE"]))
    assert url.password is None  # the password comes from the Secret, never the ConfigMap
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == url.hostname)
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    store = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == url.hostname)
    assert service["spec"]["selector"].items() <= store["spec"]["template"]["metadata"]["labels"].items()
    (valkey,) = store["spec"]["template"]["spec"]["containers"]
    assert valkey["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "switchyard-ratelimit"
    assert "--appendonly" in valkey["args"] and "--requirepass" in valkey["args"]
    # every Ray worker group (where the ingress replicas run) gets the password from that Secret
    ray = next(d for d in docs if d["kind"] == "RayService")
    patch = yaml.safe_load((K8S / "overlays" / "prod" / "patches" / "rayservice-gpu.yaml").read_text())
    gpu = next(op["value"] for op in patch if op["path"].endswith("/workerGroupSpecs/-"))
    for group in [*ray["spec"]["rayClusterConfig"]["workerGroupSpecs"], gpu]:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        secret = {e["name"]: e for e in container["env"]}["SWITCHYARD_GATEWAY_RATE_LIMIT_STORAGE_PASSWORD"]
        assert secret["valueFrom"]["secretKeyRef"] == {"name": "switchyard-ratelimit", "key": "password"}
    # ingress only from the gateway's pods, egress nowhere
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == url.hostname)
    assert policy["spec"]["podSelector"]["matchLabels"] == store["spec"]["selector"]["matchLabels"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not policy["spec"].get("egress")
    (rule,) = policy["spec"]["ingress"]
    gateway = {"app.kubernetes.io/name": "switchyard-gateway"}
    assert rule["from"] == [{"podSelector": {"matchLabels": gateway}}]
    store_pods = store["spec"]["selector"]["matchLabels"]
    egress = [d for d in docs if d["kind"] == "NetworkPolicy"
              and d["spec"]["podSelector"].get("matchLabels") == gateway
              and any(p.get("podSelector", {}).get("matchLabels") == store_pods
                      for r in d["spec"].get("egress", []) for p in r.get("to", []))]
    assert egress, "the gateway pods may not reach the store"


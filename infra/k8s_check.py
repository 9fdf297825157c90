"""Offline validation of the Kubernetes manifests (``make k8s-check``).

Every overlay under ``k8s/overlays`` is rendered with kustomize and each resource is validated
against the real schema of its kind, without a cluster and without internet beyond the package
registries:

* built-in kinds (Deployment, CronJob, ...): the Kubernetes JSON schemas shipped in the PyPI
  package ``kubernetes-validate`` (strict variants), through kubeconform ``-strict``;
* KubeRay (``RayService``): the CRDs of the Go module ``github.com/ray-project/kuberay/ray-operator``,
  converted to kubeconform's JSON schemas (unknown fields rejected);
* Prometheus operator (``PrometheusRule``, ``AlertmanagerConfig``, ``ServiceMonitor``,
  ``PodMonitor``): the CRDs of the Go module ``github.com/prometheus-operator/prometheus-operator``,
  converted the same way;
* KEDA (``ScaledObject``, ``TriggerAuthentication``): the CRDs of the Go module
  ``github.com/kedacore/keda/v2``, converted the same way;
* Strimzi (``Kafka``, ``KafkaNodePool``, ``KafkaTopic``, ``KafkaUser``): the CRDs of the current
  release (``kafka.strimzi.io/v1`` only), generated from Maven Central by Strimzi's own generator
  (:mod:`infra.k8s_strimzi`), converted the same way;
* the RayService's ``serveConfigV2``: Ray Serve's own ``ServeDeploySchema`` and
  ``AutoscalingConfig``, the gateway's ``GatewayArgs`` (the builder's typed arguments) and
  no ``user_config`` (the builder's own: the alias the replicas follow), and its deployment names
  against the code.

Then a policy lint (kube-score, :mod:`infra.k8s_lint`) runs on every rendered overlay; its waivers
live in ``k8s/lint-waivers.yaml``, each with its reason.

Tools and schemas are fetched once into ``<state_dir>/k8s-tools`` (Go module proxy, Maven Central,
PyPI).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra import k8s_lint, k8s_strimzi

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "k8s"
KUBERNETES_VERSION = "1.32.0"
KUSTOMIZE = ("sigs.k8s.io/kustomize/kustomize/v5", "v5.5.0")
KUBECONFORM = ("github.com/yannh/kubeconform/cmd/kubeconform", "v0.7.0")
KUBERAY = ("github.com/ray-project/kuberay/ray-operator", "v1.5.0")
PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
KEDA = ("github.com/kedacore/keda/v2", "v2.21.0")
KUBE_SCORE = ("github.com/zegl/kube-score/cmd/kube-score", "v1.20.0")
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's ``=`` value tag (CRD enums contain a bare ``=``)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:value"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class CheckError(RuntimeError):
    """A tool could not be fetched or built, or a manifest could not be rendered."""


@dataclass
class Tools:
    """Paths of everything the check needs, all below ``root``."""

    root: Path
    kustomize: list[str] = field(default_factory=list)
    kubeconform: Path | None = None
    k8s_schemas: Path | None = None  # the folder holding v<ver>-local-strict/
    crd_schemas: Path | None = None  # {kind}_{version}.json
    kube_score: Path | None = None


@dataclass
class OverlayResult:
    """The outcome for one overlay (or manifest directory)."""

    name: str
    resources: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         stdin: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    log.debug("run %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _go_env(root: Path) -> dict[str, str]:
    return {**os.environ, "GOBIN": str(root / "bin"), "GOFLAGS": "-mod=mod"}


def _go_install(root: Path, pkg: str, version: str) -> Path:
    """``go install pkg@version`` into ``root/bin`` once (a marker file records the version)."""
    name = pkg.rstrip("/").split("/")[-1]
    if name.startswith("v") and name[1:].isdigit():  # .../kustomize/v5
        name = pkg.rstrip("/").split("/")[-2]
    binary, marker = root / "bin" / name, root / "bin" / f".{name}-{version}"
    if binary.exists() and marker.exists():
        return binary
    if shutil.which("go") is None:
        raise CheckError(f"`go` is needed to build {name} {version} (install Go, then rerun)")
    (root / "bin").mkdir(parents=True, exist_ok=True)
    res = _run(["go", "install", f"{pkg}@{version}"], env=_go_env(root))
    if res.returncode != 0 or not binary.exists():
        raise CheckError(f"go install {pkg}@{version} failed:\n{res.stderr[-2000:]}")
    marker.touch()
    return binary


def _go_module_dir(root: Path, module: str, version: str) -> Path:
    """The extracted source of a Go module (``go mod download``; the Go proxy only)."""
    res = _run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=root, env=_go_env(root))
    try:
        info = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        raise CheckError(f"go mod download {module}@{version} failed:\n{res.stderr[-2000:]}") from exc
    if info.get("Error") or not info.get("Dir"):
        raise CheckError(f"go mod download {module}@{version} failed: {info.get('Error')}")
    return Path(info["Dir"])


def crd_to_json_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """kubeconform schemas (``{kind}_{version}.json``, lower-case) of every version of a CRD.

    Like kubeconform's own ``openapi2jsonschema.py``: objects that list their properties reject
    unknown ones (unless ``x-kubernetes-preserve-unknown-fields``), and int-or-string fields accept
    both."""
    kind = crd["spec"]["names"]["kind"].lower()
    out: dict[str, dict[str, Any]] = {}
    for version in crd["spec"]["versions"]:
        schema = copy.deepcopy((version.get("schema") or {}).get("openAPIV3Schema"))
        if schema is None:
            continue
        out[f"{kind}_{version['name']}.json"] = _strict(schema)
    return out


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items()}
    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        node.pop("type", None)
        node.pop("format", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    return node


def ensure_tools(root: Path) -> Tools:
    """Fetch/build every tool and schema into ``root`` (idempotent; cached between runs)."""
    root.mkdir(parents=True, exist_ok=True)
    tools = Tools(root=root)
    t0 = time.monotonic()
    # kustomize: built from the Go proxy; `kubectl kustomize` only when that is impossible.
    try:
        tools.kustomize = [str(_go_install(root, *KUSTOMIZE)), "build"]
    except CheckError:
        if shutil.which("kubectl") is None:
            raise
        log.warning("building kustomize failed; falling back to `kubectl kustomize`")
        tools.kustomize = ["kubectl", "kustomize"]
    tools.kubeconform = _go_install(root, *KUBECONFORM)
    tools.kube_score = _go_install(root, *KUBE_SCORE)
    # CRD schemas: KubeRay, the Prometheus operator and KEDA from their Go modules; Strimzi generated.
    crd_dir = root / "crd-schemas"
    strimzi = k8s_strimzi.strimzi_version()
    marker = crd_dir / f".{KUBERAY[1]}-{PROMETHEUS_OPERATOR[1]}-{KEDA[1]}-strimzi-{strimzi}"
    if not marker.exists():
        shutil.rmtree(crd_dir, ignore_errors=True)
        crd_dir.mkdir(parents=True, exist_ok=True)
        try:
            strimzi_files = k8s_strimzi.generate_crds(root / "strimzi")
        except k8s_strimzi.StrimziError as exc:
            raise CheckError(str(exc)) from exc
        sources = [
            (_go_module_dir(root, *KUBERAY) / "config" / "crd" / "bases", "ray.io_*.yaml"),
            (_go_module_dir(root, *PROMETHEUS_OPERATOR) / "example" / "prometheus-operator-crd",
             "monitoring.coreos.com_*.yaml"),
            (_go_module_dir(root, *KEDA) / "config" / "crd" / "bases", "keda.sh_*.yaml"),
            (strimzi_files[0].parent, "*.yaml"),
        ]
        for folder, pattern in sources:
            files = sorted(folder.glob(pattern))
            if not files:
                raise CheckError(f"no CRDs matching {pattern} in {folder}")
            for f in files:
                for doc in yaml.load_all(f.read_text(), Loader=_Loader):  # noqa: S506 - a SafeLoader
                    if doc and doc.get("kind") == "CustomResourceDefinition":
                        for name, schema in crd_to_json_schemas(doc).items():
                            (crd_dir / name).write_text(json.dumps(schema))
        marker.touch()
    tools.crd_schemas = crd_dir
    # Built-in kinds: kubernetes-validate's schemas (PyPI), installed into a target folder.
    py_dir = root / "py"
    wanted = f"v{KUBERNETES_VERSION}-local-strict"
    if not any(py_dir.glob(f"**/{wanted}")):
        uv = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        cmd = ([uv, "pip", "install", "--python", sys.executable] if uv
               else [sys.executable, "-m", "pip", "install", "-q"])
        res = _run([*cmd, "--no-deps", "--target", str(py_dir), KUBERNETES_VALIDATE])
        if res.returncode != 0:
            raise CheckError(f"installing {KUBERNETES_VALIDATE} failed:\n{res.stderr[-2000:]}")
    found = sorted(py_dir.glob(f"**/{wanted}"))
    if not found:
        raise CheckError(f"{KUBERNETES_VALIDATE} has no {wanted} schemas in {py_dir}")
    tools.k8s_schemas = found[0].parent
    log.info("tools ready in %s (%.1fs)", root, time.monotonic() - t0)
    return tools


_DEFS_REF = "/api/_definitions.json#/$defs/"


def _kind_file(doc: dict[str, Any]) -> str:
    """kubeconform's file name of a kind: ``{kind}{-group}-{version}.json`` (lower-case)."""
    group, _, version = doc["apiVersion"].rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{doc['kind'].lower()}{suffix}.json".lower()


def standalone_k8s_schemas(tools: Tools, docs: Iterable[dict[str, Any]]) -> Path:
    """Standalone copies of the built-in kinds' strict schemas that ``docs`` use.

    kubernetes-validate's schemas point into a shared ``/api/_definitions.json``; kubeconform
    needs each schema self-contained, so the definitions a kind reaches are copied in as ``$defs``."""
    assert tools.k8s_schemas is not None
    src = tools.k8s_schemas / f"v{KUBERNETES_VERSION}-local-strict"
    dst = tools.root / "k8s-schemas" / f"v{KUBERNETES_VERSION}-standalone-strict"
    dst.mkdir(parents=True, exist_ok=True)
    defs: dict[str, Any] | None = None
    for doc in docs:
        name = _kind_file(doc)
        if (dst / name).exists() or not (src / name).exists():
            continue  # done before, or not a built-in kind (kubeconform reports a missing schema)
        if defs is None:
            defs = json.loads((src / "_definitions.json").read_text())["$defs"]
        schema = json.loads((src / name).read_text())
        needed: dict[str, Any] = {}
        todo = [schema]
        while todo:
            node = todo.pop()
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith(_DEFS_REF):
                    node["$ref"] = "#/$defs/" + ref[len(_DEFS_REF):]
                    ref = node["$ref"]
                if isinstance(ref, str) and ref.startswith("#/$defs/"):
                    key = ref[len("#/$defs/"):]
                    if key not in needed:
                        needed[key] = copy.deepcopy(defs[key])
                        todo.append(needed[key])
                todo.extend(v for k, v in node.items() if k != "$ref")
            elif isinstance(node, list):
                todo.extend(node)
        schema["$defs"] = needed
        (dst / name).write_text(json.dumps(schema))
    return dst.parent


def render(tools: Tools, directory: Path) -> list[dict[str, Any]]:
    """The resources of a kustomization (``kustomize build``)."""
    res = _run([*tools.kustomize, str(directory)])
    if res.returncode != 0:
        raise CheckError(f"kustomize build {directory} failed:\n{res.stderr[-2000:]}")
    return [d for d in yaml.load_all(res.stdout, Loader=_Loader) if d]  # noqa: S506


def _kubeconform(tools: Tools, docs: list[dict[str, Any]]) -> tuple[list[str], dict[str, int]]:
    assert tools.kubeconform and tools.k8s_schemas and tools.crd_schemas
    k8s_schemas = standalone_k8s_schemas(tools, docs)
    cmd = [
        str(tools.kubeconform), "-strict", "-summary", "-output", "json",
        "-kubernetes-version", KUBERNETES_VERSION,
        "-schema-location",
        f"{k8s_schemas}/{{{{.NormalizedKubernetesVersion}}}}-standalone-strict/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
        "-schema-location", f"{tools.crd_schemas}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json",
    ]
    stream = yaml.safe_dump_all(docs, sort_keys=False)
    res = _run(cmd, stdin=stream)
    try:
        out = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        raise CheckError(f"kubeconform failed:\n{res.stdout[-1000:]}{res.stderr[-1000:]}") from exc
    errors = [
        f"{r.get('kind')} {r.get('name')}: {r.get('status')}: {r.get('msg')}"
        for r in out.get("resources", [])
        if r.get("status") in ("statusInvalid", "statusError")
    ]
    if res.returncode != 0 and not errors:
        errors.append(f"kubeconform exited {res.returncode}: {res.stderr[-500:]}")
    return errors, out.get("summary", {})


def check_serve_config(doc: dict[str, Any]) -> list[str]:
    """Validate a RayService's ``serveConfigV2`` with Ray Serve's schema and the gateway's builder
    arguments; deployment overrides must name deployments that exist in the code."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    name = doc["metadata"]["name"]
    try:
        raw = yaml.safe_load(doc["spec"]["serveConfigV2"])
        config = ServeDeploySchema.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - report any parse/validation failure
        return [f"RayService {name}: serveConfigV2 invalid: {exc}"]
    errors: list[str] = []
    for app in config.applications:
        module_name, _, attr = app.import_path.partition(":")
        try:
            module = __import__(module_name, fromlist=[attr])
            builder = getattr(module, attr)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"RayService {name}: import_path {app.import_path} does not import: {exc!r}")
            continue
        args_model = getattr(module, "GatewayArgs", None)
        if args_model is not None:
            try:
                args_model.model_validate(app.args or {})
            except Exception as exc:  # noqa: BLE001
                errors.append(f"RayService {name}: args rejected by {args_model.__name__}: {exc}")
        known = {getattr(v, "name", None) for v in vars(module).values() if type(v).__name__ == "Deployment"}
        for dep in app.deployments:
            if dep.name not in known:
                errors.append(
                    f"RayService {name}: deployment {dep.name!r} is not in {module_name} ({sorted(known)})"
                )
            fields_set = getattr(dep, "model_fields_set", None) or getattr(dep, "__fields_set__", set())
            if "user_config" in fields_set:
                # the builder gives both deployments {router_ref, poll_s}; one set here would pin
                # this deployment to another reference than the other one follows
                errors.append(
                    f"RayService {name}: {dep.name} sets user_config: leave it to the app builder "
                    "(SWITCHYARD_GATEWAY_ROUTER_REF / _ROUTER_POLL_S), which gives both deployments "
                    "the alias every replica follows"
                )
            autoscaling = getattr(dep, "autoscaling_config", None)
            if isinstance(autoscaling, dict):
                try:
                    AutoscalingConfig(**autoscaling)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"RayService {name}: {dep.name} autoscaling_config invalid: {exc}")
        if not callable(builder):
            errors.append(f"RayService {name}: {app.import_path} is not callable")
    return errors


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def check_documents(tools: Tools, name: str, docs: list[dict[str, Any]]) -> OverlayResult:
    """Validate rendered resources: kubeconform (built-in kinds and every CRD), the Serve config."""
    result = OverlayResult(name=name, resources=len(docs))
    for d in docs:
        result.kinds[d["kind"]] = result.kinds.get(d["kind"], 0) + 1
    errors, summary = _kubeconform(tools, docs)
    result.errors += errors
    result.notes.append(
        f"kubeconform -strict: {summary.get('valid', 0)} valid, {summary.get('invalid', 0)} invalid, "
        f"{summary.get('errors', 0)} errors, {summary.get('skipped', 0)} skipped"
    )
    for kafka in (d for d in docs if d["kind"] == "Kafka"):
        wanted, shipped = kafka["spec"]["kafka"].get("version"), k8s_strimzi.default_kafka_version()
        if wanted and shipped and _version(wanted) > _version(shipped):
            result.errors.append(
                f"Kafka {kafka['metadata']['name']}: version {wanted} is newer than Kafka {shipped}, "
                f"the newest Strimzi {k8s_strimzi.strimzi_version()} ships; its operator refuses it")
    rayservices = [d for d in docs if d["kind"] == "RayService"]
    for d in rayservices:
        result.errors += check_serve_config(d)
    result.notes.append(
        f"serveConfigV2 (Serve schema, GatewayArgs, RouterConfig): {len(rayservices)} checked"
    )
    return result


def overlays() -> list[Path]:
    """Every overlay directory (each has a kustomization.yaml)."""
    return sorted(p.parent for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))


def job_templates() -> list[dict[str, Any]]:
    """The one-off Job templates in k8s/jobs (not part of any overlay)."""
    files = sorted((K8S_DIR / "jobs").glob("*.yaml"))
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def check(state_dir: Path, names: Iterable[str] | None = None) -> list[OverlayResult]:
    """Render and validate the chosen overlays (default all) and the Job templates in k8s/jobs."""
    tools = ensure_tools(state_dir / "k8s-tools")
    wanted = set(names or [])
    results = []
    for overlay in overlays():
        if wanted and overlay.name not in wanted:
            continue
        docs = render(tools, overlay)
        result = check_documents(tools, f"overlays/{overlay.name}", docs)
        findings, waived = k8s_lint.lint(tools.kube_score, docs)
        result.errors += findings
        result.notes.append(f"kube-score {KUBE_SCORE[1]}: {len(findings)} findings, {waived} waived "
                            f"(k8s/lint-waivers.yaml)")
        results.append(result)
    if not wanted:
        jobs = job_templates()
        results.append(check_documents(tools, "jobs", jobs))
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.k8s_check [--overlay NAME ...]``: exit 0 when every resource is valid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", action="append", help="Only this overlay (repeatable).")
    default_state = Path(os.environ.get("SWITCHYARD_STATE_DIR", REPO / ".state"))
    parser.add_argument("--state-dir", type=Path, default=default_state)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    try:
        results = check(args.state_dir.resolve(), args.overlay)
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        kinds = ", ".join(f"{k}×{n}" for k, n in sorted(r.kinds.items()))
        print(f"{'OK  ' if r.ok else 'FAIL'} {r.name}: {r.resources} resources ({kinds})")
        for n in r.notes:
            print(f"       {n}")
        for e in r.errors:
            print(f"       ERROR {e}")
    print(f"k8s-check: {sum(r.ok for r in results)}/{len(results)} manifest sets valid "
          f"in {time.monotonic() - t0:.1f}s")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Strimzi's CRDs, generated offline for ``make k8s-check``.

Strimzi publishes no CRD YAML, JSON schema or TypeScript model of its current release in any package
registry, but Maven Central has both halves of how Strimzi's build writes them: the API model classes
(``io.strimzi:api``) and its generator (``io.strimzi:crd-generator``). This runs the generator with
the arguments of Strimzi's own ``api/pom.xml`` (``--api-versions v1``: what the operator serves),
giving the same ``CustomResourceDefinition`` documents as ``packaging/install/cluster-operator``.
Needs ``mvn`` and a Java 21+ runtime (the jars are class file 65)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

POM = Path(__file__).resolve().parents[1] / "k8s" / "tools" / "strimzi" / "pom.xml"
GENERATOR = "io.strimzi.crdgenerator.CrdGenerator"
# kind -> model class, as in Strimzi's api/pom.xml
MODELS = {
    "Kafka": "io.strimzi.api.kafka.model.kafka.Kafka",
    "KafkaNodePool": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "KafkaTopic": "io.strimzi.api.kafka.model.topic.KafkaTopic",
    "KafkaUser": "io.strimzi.api.kafka.model.user.KafkaUser",
}


class StrimziError(RuntimeError):
    """The CRDs could not be generated (no mvn, no Java 21+, Maven Central unreachable)."""


def strimzi_version() -> str:
    """The Strimzi release pinned in ``k8s/tools/strimzi/pom.xml``."""
    match = re.search(r"<strimzi.version>([^<]+)</strimzi.version>", POM.read_text())
    if not match:
        raise StrimziError(f"no <strimzi.version> in {POM}")
    return match.group(1)


def default_kafka_version(strimzi: str | None = None) -> str | None:
    """The Kafka version Strimzi's release builds with (its newest supported one): ``kafka.version``
    of the parent POM ``io.strimzi:strimzi``, which resolving the classpath put in the local Maven
    repository; ``None`` when it is not there."""
    strimzi = strimzi or strimzi_version()
    pom = Path.home() / ".m2" / "repository" / "io" / "strimzi" / "strimzi" / strimzi
    pom = pom / f"strimzi-{strimzi}.pom"
    if not pom.exists():
        return None
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text())
    return match.group(1) if match else None


def _java21() -> str:
    """A ``java`` of release 21 or newer: ``$JAVA_HOME``, ``PATH``, then ``/usr/lib/jvm/*``."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java") or "java"))
    candidates += sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True)
    for java in candidates:
        res = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)
        match = re.search(r'version "(\d+)', res.stderr)
        if res.returncode == 0 and match and int(match.group(1)) >= 21:
            return str(java)
    raise StrimziError("Strimzi's CRD generator needs Java 21+ (set JAVA_HOME)")


def generate_crds(work: Path, timeout: float = 900) -> list[Path]:
    """Generate the CRDs of :data:`MODELS` into ``work``; the YAML files written."""
    if shutil.which("mvn") is None:
        raise StrimziError("`mvn` is needed to fetch Strimzi's API and CRD generator from Maven Central")
    java = _java21()
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(POM, work / "pom.xml")
    res = subprocess.run(["mvn", "-q", "-B", "dependency:build-classpath", "-Dmdep.outputFile=classpath.txt"],
                         cwd=work, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise StrimziError(f"mvn dependency:build-classpath failed:\n{(res.stdout + res.stderr)[-2000:]}")
    outputs = {kind: work / f"{kind.lower()}.yaml" for kind in MODELS}
    cmd = [java, "-cp", (work / "classpath.txt").read_text().strip(), GENERATOR,
           "--label", "app:strimzi", "--label", "strimzi.io/crd-install:true", "--target-kube", "1.16+",
           "--crd-api-version", "v1", "--api-versions", "v1", "--storage-version", "v1", "--yaml",
           *(f"{MODELS[kind]}={path}" for kind, path in outputs.items())]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0 or not all(p.exists() for p in outputs.values()):
        raise StrimziError(f"{GENERATOR} failed:\n{(res.stdout + res.stderr)[-2000:]}")
    return list(outputs.values())

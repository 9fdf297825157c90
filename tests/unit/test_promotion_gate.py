"""Promotion gating (issue 15, item 5): ``switchyard router promote`` refuses a router without a
passed gate record or that fails verification, unless ``--force``. MLflow is faked here;
tests/integration/test_router_mlflow.py runs the same paths against the real local server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from services.contracts.settings import MLflowSettings
from training import promote as promotion
from training import registry


class _NotFound(Exception):
    pass


class FakeClient:
    """The few MlflowClient calls the gate reads: versions with tags, aliases."""

    def __init__(self, versions: dict[str, dict[str, str]], aliases: dict[str, str]):
        self.versions, self.aliases = versions, aliases

    def get_model_version(self, name: str, version: str):  # noqa: ANN201
        from mlflow.exceptions import MlflowException

        if str(version) not in self.versions:
            raise MlflowException(f"no version {version} of {name}")
        return SimpleNamespace(version=str(version), tags=self.versions[str(version)])

    def get_model_version_by_alias(self, name: str, alias: str):  # noqa: ANN201
        from mlflow.exceptions import MlflowException

        if alias not in self.aliases:
            raise MlflowException(f"no alias {alias} on {name}")
        return self.get_model_version(name, self.aliases[alias])


PASSED = {"gate": "passed", "gate_kind": "champion", "gate_reasons": "", "router_version": "mlp-1"}
UNGATED = {"gate": "none", "gate_kind": "none", "gate_reasons": "registered outside the retrain loop"}
FAILED = {"gate": "failed", "gate_kind": "champion", "gate_reasons": "task gsm8k worse by 3.1 points"}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    client = FakeClient(
        {"1": PASSED, "2": UNGATED, "3": FAILED, "4": {}}, {"challenger": "2", "champion": "1"}
    )
    promoted: list[str] = []
    tagged: list[tuple[str, dict]] = []
    verify_fail: set[str] = set()

    def verify(check, ref, uri):  # noqa: ANN001, ANN202
        if check.version in verify_fail:
            check.problems.append("fails verification: router artefact is corrupt or was modified")
        else:
            check.verified = True

    monkeypatch.setattr(promotion, "_client", lambda ms: client)
    monkeypatch.setattr(promotion, "_verify", verify)
    monkeypatch.setattr(promotion, "promote", lambda ms, version, **kw: promoted.append(version) or version)
    monkeypatch.setattr(promotion, "tag_version", lambda ms, v, tags: tagged.append((v, tags)))
    return SimpleNamespace(client=client, promoted=promoted, tagged=tagged, verify_fail=verify_fail)


MS = MLflowSettings(tracking_uri="http://127.0.0.1:1", registered_model="r")


# -- the record -------------------------------------------------------------------------------------


def test_gate_record_loop_verdict_bootstrap_and_none() -> None:
    verdict = {"gate": {"passed": False, "reasons": "worse on gsm8k"}, "champion_version": "3"}
    loop = registry.gate_record(verdict, "3", "r")
    assert loop == {"gate": "failed", "gate_kind": "champion", "gate_reasons": "worse on gsm8k"}
    first_loop = registry.gate_record(
        {"gate": {"passed": True, "reasons": ""}, "champion_version": None}, None, "r"
    )
    assert first_loop["gate"] == "passed" and first_loop["gate_kind"] == "absolute"
    first = registry.gate_record({"train": {}}, None, "r")
    assert (
        first["gate"] == "passed"
        and first["gate_kind"] == "bootstrap"
        and "no champion" in first["gate_reasons"]
    )
    later = registry.gate_record({"train": {}}, "3", "r")
    assert later["gate"] == "none" and "champion version 3" in later["gate_reasons"]


def test_the_router_area_reads_the_registry_tag_names() -> None:
    from services.router import promotion as cli

    assert (cli.GATE_TAG, cli.GATE_KIND_TAG, cli.GATE_REASONS_TAG) == (
        registry.GATE_TAG,
        registry.GATE_KIND_TAG,
        registry.GATE_REASONS_TAG,
    )


def test_parse_model_ref() -> None:
    assert promotion.parse_model_ref("models:/r/7") == ("r", "7", None)
    assert promotion.parse_model_ref("models:/a/b@champion") == ("a/b", None, "champion")
    assert promotion.parse_model_ref("runs:/abc/router") is None
    assert promotion.parse_model_ref("/tmp/router") is None


# -- promote ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "why"),
    [("2", "gate none"), ("3", "gate failed: task gsm8k"), ("4", "no gate record")],
)
def test_promote_refuses_ungated_or_failed_versions(fake, version: str, why: str) -> None:
    v, check = promotion.promote_checked(MS, version=version)
    assert v is None and not fake.promoted
    assert why in check.summary()


def test_promote_refuses_an_unverifiable_version_even_if_gated(fake) -> None:
    fake.verify_fail.add("1")
    v, check = promotion.promote_checked(MS, version="1")
    assert v is None and "fails verification" in check.summary()


def test_promote_passes_a_gated_verified_version_and_force_records_itself(fake) -> None:
    v, check = promotion.promote_checked(MS, version="1")
    assert v == "1" and check.ok and check.verified and fake.promoted == ["1"] and not fake.tagged
    v, check = promotion.promote_checked(MS, force=True)  # the challenger, version 2: ungated
    assert v == "2" and not check.ok and fake.promoted == ["1", "2"]
    assert fake.tagged == [("2", {"forced_promotion": check.problems[0]})]


def test_router_promote_cli_refuses_without_force(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.cli import router_app

    monkeypatch.setenv("SWITCHYARD_MLFLOW_REGISTERED_MODEL", "r")
    runner = CliRunner()
    res = runner.invoke(router_app, ["promote", "--version", "2"])
    assert res.exit_code == 1 and "refusing to promote" in res.output and "--force" in res.output
    assert not fake.promoted
    res = runner.invoke(router_app, ["promote"])  # the challenger is version 2 too
    assert res.exit_code == 1 and not fake.promoted
    res = runner.invoke(router_app, ["promote", "--version", "2", "--force"])
    assert res.exit_code == 0, res.output
    assert "forced" in res.output and "@champion -> version 2" in res.output and fake.promoted == ["2"]
    res = runner.invoke(router_app, ["promote", "--version", "1"])
    assert res.exit_code == 0 and fake.promoted == ["2", "1"]


# -- serve swap (removed: the replicas follow their alias) -------------------------------------------


def test_serve_swap_is_gone_and_says_what_to_use() -> None:
    from services.gateway import cli

    res = CliRunner().invoke(cli.serve_app, ["swap", "models:/r/2"])
    assert res.exit_code == 2
    assert "follow their MLflow alias" in res.output and "router promote --version N --wait" in res.output

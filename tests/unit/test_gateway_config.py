"""The Serve config YAML is valid for Serve and for the typed app builder; settings parse."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from services.errors import Unauthorized
from services.gateway.auth import KeyStore
from services.gateway.deployments import GatewayArgs
from services.gateway.routing import RouterConfig
from services.gateway.settings import GatewaySettings, hash_key

CONFIG = Path(__file__).resolve().parents[2] / "services" / "gateway" / "serve_config.yaml"


def test_serve_config_matches_serve_schema_and_builder_args() -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(CONFIG.read_text())
    schema = (
        ServeDeploySchema.model_validate(raw)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(raw)
    )
    app = schema.applications[0]
    module, _, attr = app.import_path.partition(":")
    assert module == "services.gateway.deployments" and attr == "build_app"
    args = GatewayArgs.model_validate(app.args)
    assert args.gateway_settings().router_ref == args.router_ref
    names = {d["name"] if isinstance(d, dict) else d.name for d in app.deployments}
    assert names == {"RouterDeployment", "ChatIngress"}
    # the builder gives both deployments the same {router_ref, poll_s}: a user_config here would
    # pin one deployment to another reference than the other follows
    assert all("user_config" not in d for d in raw["applications"][0]["deployments"])
    follow = RouterConfig(router_ref=args.router_ref, poll_s=args.gateway_settings().router_poll_s)
    assert follow.router_ref.endswith("@champion") and follow.poll_s > 0


def test_invalid_user_config_is_rejected_loudly() -> None:
    with pytest.raises(ValidationError):
        RouterConfig.model_validate({"router_ref": ""})
    with pytest.raises(ValidationError):
        RouterConfig.model_validate({"model": "x"})


def test_settings_hash_keys_and_never_show_them(monkeypatch) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_API_KEYS", '["sk-a"]')
    monkeypatch.setenv("SWITCHYARD_GATEWAY_API_KEY_HASHES", f'["{hash_key("sk-b")}"]')
    s = GatewaySettings()
    assert "sk-a" not in repr(s) and "sk-a" not in s.model_dump_json()
    store = KeyStore(s.key_hashes())
    a, b = store.authenticate("Bearer sk-a"), store.authenticate("Bearer sk-b")
    assert a.key_id != b.key_id and "sk-a" not in a.key_id  # one identity per key, never the key
    with pytest.raises(Unauthorized):
        store.authenticate("Bearer sk-c")
    with pytest.raises(ValidationError):
        GatewaySettings(api_key_hashes=["not-a-hash"])


def test_config_validate_command(tmp_path) -> None:
    from typer.testing import CliRunner

    from services.gateway.cli import config_app

    runner = CliRunner()
    ok = runner.invoke(config_app, ["validate"])
    assert ok.exit_code == 0 and "models" in ok.output
    bad = tmp_path / "catalog.yaml"
    bad.write_text("providers: []\ntiers: [a]\nmodels: []\nstrong_model: x\ndefault_model: x\n")
    res = runner.invoke(config_app, ["validate", str(bad)])
    assert res.exit_code == 1 and "strong_model" in res.output

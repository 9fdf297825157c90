"""Settings, one pydantic-settings class per area, all read from ``SWITCHYARD_*`` env vars.

Nothing here is instantiated at import time: entrypoints (the CLI, Serve builders, the Faust
factory) build the settings they need and pass them down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=None, extra="ignore")


class DataSettings(BaseSettings):
    """Where the benchmark files live (``SWITCHYARD_DATA_DIR``)."""

    model_config = _config("SWITCHYARD_")

    data_dir: Path = Field(
        default=Path("data"),
        description="Directory with routellm/ and routerbench/ (here and in CI: ../shared/data).",
    )
    data_download: bool = Field(
        default=True,
        description="Whether `make data` may download missing files from their public sources.",
    )


class StackSettings(BaseSettings):
    """The local stack: where state lives and which ports the processes bind on 127.0.0.1."""

    model_config = _config("SWITCHYARD_")

    state_dir: Path = Field(default=Path(".state"), description="Logs, pid files, Kafka/MLflow data.")
    host: str = Field(default="127.0.0.1", description="The address every local service binds to.")
    kafka_port: int = Field(default=9092, ge=1, le=65535, description="The local broker's client listener.")
    kafka_controller_port: int = Field(
        default=9093, ge=1, le=65535, description="The local broker's KRaft controller listener."
    )
    kafka_heap: str = Field(default="512m", pattern=r"^\d+[mMgG]$", description="The local broker's heap.")
    kafka_libs_dir: Path | None = Field(
        default=None, description="Kafka runtime jars; default <state_dir>/kafka-libs (filled by make setup)."
    )
    mlflow_port: int = Field(default=5000, ge=1, le=65535, description="The local MLflow server's port.")
    ready_timeout_s: float = Field(
        default=180.0, gt=0, description="How long `make up` waits for each service to answer."
    )

    @property
    def kafka_libs(self) -> Path:
        return self.kafka_libs_dir or self.state_dir / "kafka-libs"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"


class KafkaSettings(BaseSettings):
    """How clients reach the broker (``SWITCHYARD_KAFKA_BOOTSTRAP``)."""

    model_config = _config("SWITCHYARD_KAFKA_")

    bootstrap: str = Field(
        default_factory=lambda: StackSettings().kafka_bootstrap,
        description="host:port list; default: the local stack's broker (SWITCHYARD_KAFKA_PORT).",
    )
    client_id: str = Field(default="switchyard", description="Kafka client id (suffixed per component).")
    topic_prefix: str = Field(
        default="",
        description="Prepended to every topic name (tests use a unique prefix per test).",
    )
    request_timeout_ms: int = Field(default=15000, gt=0, description="Kafka client request timeout.")
    # security: what every client (gateway producer, stream worker, training, topic admin) uses
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol (SASL_SSL for a SCRAM + TLS listener)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism, required with SASL_*."
    )
    sasl_username: str | None = Field(default=None, description="SASL user (e.g. the client's KafkaUser).")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (from a secret env var); never logged."
    )
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle that signs the brokers' certificates (SSL, SASL_SSL)."
    )

    @field_validator("bootstrap")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("SWITCHYARD_KAFKA_BOOTSTRAP must name at least one host:port")
        return v

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"SWITCHYARD_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs "
                "SWITCHYARD_KAFKA_SASL_MECHANISM, _SASL_USERNAME and _SASL_PASSWORD"
            )
        return self

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client (producer, consumer, admin) takes for this
        broker's security; empty for PLAINTEXT."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        opts: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_password is not None
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return opts

    def faust_credentials(self) -> Any:
        """The same security as Faust's ``broker_credentials`` (None for PLAINTEXT)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import faust

        ssl_context = self.client_options().get("ssl_context")
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_password is not None
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                ssl_context=ssl_context,
                mechanism=self.sasl_mechanism,
            )
        return faust.SSLCredentials(ssl_context)


class PrivacySettings(BaseSettings):
    """The key of the prompt hashes in events (``SWITCHYARD_PROMPT_HASH_KEY``).

    Events carry ``prompt_hash`` = HMAC-SHA256(key, prompt): without the key nobody can test a
    guessed prompt against it. The gateway hashes with it; training needs the same key only to
    restore redacted prompts from its benchmark rows. Unset, each process uses a key file in its
    state dir (created once, mode 0600): fine for one machine, but set it (from a Secret) for
    every gateway and training pod of a fleet."""

    model_config = _config("SWITCHYARD_")

    prompt_hash_key: SecretStr | None = Field(
        default=None, description="Key of the prompt hashes in events (HMAC-SHA256); from a secret."
    )

    def key(self, state_dir: Path) -> bytes:
        """The configured key, else ``<state_dir>/secrets/prompt-hash.key`` (created once)."""
        if self.prompt_hash_key is not None:
            return self.prompt_hash_key.get_secret_value().encode("utf-8")
        return local_key(state_dir.resolve() / "secrets" / "prompt-hash.key")


def local_key(path: Path) -> bytes:
    """A 32-byte secret kept in ``path`` (hex, mode 0600), created by the first process that needs
    it; every other process on the machine reads the same one."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    import os
    import secrets

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # the first process's key wins; the others read it
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


class MLflowSettings(BaseSettings):
    """Where the MLflow tracking server is (``SWITCHYARD_MLFLOW_TRACKING_URI``)."""

    model_config = _config("SWITCHYARD_MLFLOW_")

    tracking_uri: str = Field(
        default_factory=lambda: StackSettings().mlflow_uri,
        description="default: the local stack's server (SWITCHYARD_MLFLOW_PORT).",
    )
    registered_model: str = Field(
        default="switchyard-router", description="The registered model routers are versions of."
    )
    experiment: str = Field(default="switchyard-router", description="The experiment training runs log to.")

"""The ``switchyard`` command: the composition root that wires every area's subcommands.

It lives outside ``services`` so that ``services`` never imports ``streams`` or ``training``.
Area modules import their heavy dependencies inside the commands, so ``switchyard --help``
stays fast.
"""

from __future__ import annotations

import logging

import typer

from infra.cli import data_app, stack_app, topics_app
from services.contracts.cli import contracts_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Switchyard: the LLM routing gateway.")
app.add_typer(stack_app, name="stack", help="Start/stop the local stack (Kafka KRaft, MLflow).")
app.add_typer(topics_app, name="topics", help="Kafka topics from their one definition.")
app.add_typer(data_app, name="data", help="Benchmark data: fetch or check the data directory.")
app.add_typer(contracts_app, name="contracts", help="Event contracts: JSON Schema export, validation.")
# --- area subcommands (one line each) ---
from infra.emulator.cli import emulator_app; app.add_typer(emulator_app, name="emulator", help="Upstream emulator: recorded answers, faults, drift.")  # noqa: E402,E501,E702,I001
from infra.replay.cli import replay_app; app.add_typer(replay_app, name="replay", help="Replay benchmark traffic; feedback; drift scenarios.")  # noqa: E402,E501,E702,I001
from streams.cli import stream_app; app.add_typer(stream_app, name="stream", help="Streams worker: quality, drift, alerts.")  # noqa: E402,E501,E702,I001
from training.cli import router_app; app.add_typer(router_app, name="router", help="The router artefact: score, route, check, promote, roll back.")  # noqa: E402,E501,E702,I001
from services.gateway.cli import serve_app; app.add_typer(serve_app, name="serve", help="Run the gateway (Ray Serve) locally; hot-swap its router.")  # noqa: E402,E501,E702,I001
from services.gateway.cli import config_app; app.add_typer(config_app, name="config", help="Validate the model catalog; hash API keys.")  # noqa: E402,E501,E702,I001
from training.cli import train_app; app.add_typer(train_app, name="train", help="Produce routers: train, the closed loop, evaluations.")  # noqa: E402,E501,E702,I001


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()

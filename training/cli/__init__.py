"""The training area's commands, mounted by ``switchyard/cli.py``:

- ``switchyard router ...`` (:mod:`.router`): the router artefact — score, route, check, promote,
  rollback;
- ``switchyard train ...`` (:mod:`.train`): producing routers — ``train router`` from the
  benchmarks, the closed loop (``run``, ``worker``, ``request``, ``status``, ``shadow``) and
  ``train eval ...`` (:mod:`.evaluate`).

The names used before the split still work, hidden and marked deprecated.
"""

from __future__ import annotations

import typer

from .evaluate import finetune_cmd, kinds_cmd
from .router import rollback_cmd, router_app
from .train import router_cmd, train_app

__all__ = ["router_app", "train_app"]


def _deprecated_train_rollback(
    no_redeploy: bool = typer.Option(False, "--no-redeploy", help="Only move the alias."),
) -> None:
    """Deprecated: ``switchyard router rollback --wait``."""
    rollback_cmd(alias="champion", wait=not no_redeploy, gateway_url=None)


for _app, _name, _fn, _new in (
    (router_app, "train", router_cmd, "switchyard train router"),
    (router_app, "eval", kinds_cmd, "switchyard train eval kinds"),
    (router_app, "finetune-eval", finetune_cmd, "switchyard train eval finetune"),
    (train_app, "rollback", _deprecated_train_rollback, "switchyard router rollback --wait"),
):
    _app.command(_name, hidden=True, deprecated=True, help=f"Deprecated: use `{_new}`.")(_fn)

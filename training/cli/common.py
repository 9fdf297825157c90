"""What the training area's commands share: one-line errors, the data directory, the benchmark."""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def fail(msg: str, code: int = 2) -> typer.Exit:
    """Print ``error: msg`` on stderr; the caller raises the returned ``Exit`` (code 2: usage)."""
    typer.secho(f"error: {msg}", fg="red", err=True)
    return typer.Exit(code)


def csv(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [x.strip() for x in value.split(",") if x.strip()]


def resolve_data_dir(path: Path | None) -> Path:
    """The benchmark data: ``path``, else ``SWITCHYARD_DATA_DIR``, else ``../shared/data``."""
    from services.contracts.settings import DataSettings

    found = path or DataSettings().data_dir
    if not (found / "routellm").exists() and not (found / "routerbench").exists():
        sibling = Path.cwd().parent / "shared" / "data"
        if path is None and (sibling / "routellm").exists():
            return sibling
        raise fail(f"no benchmark data under {found}; set SWITCHYARD_DATA_DIR or pass --data-dir")
    return found


def benchmark(path: Path | None, datasets: list[str], max_rows: int | None = None):  # noqa: ANN201
    """:func:`training.data.load_benchmark` of the data directory; unknown datasets fail."""
    from ..data import load_benchmark

    try:
        return load_benchmark(resolve_data_dir(path), datasets, max_rows)
    except ValueError as exc:
        raise fail(str(exc)) from exc


def log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

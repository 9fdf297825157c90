"""Build the emulator app from settings and serve it with uvicorn (uvloop + httptools, one process).

One process on purpose: faults, drift and counters are process state that the admin endpoints
change, and one uvloop/httptools process already serves thousands of requests per second here
(see docs/development.md, emulator "Measured").
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from services.catalog import load_catalog
from services.contracts.settings import DataSettings

from .app import EmulatorApp
from .asgi import StreamCut
from .core import Emulator
from .corpus import Corpus
from .settings import EmulatorSettings, load_config

log = logging.getLogger(__name__)


def resolve_data_dir(path: Path | None) -> Path:
    """The benchmark directory: the setting, else SWITCHYARD_DATA_DIR, else ../shared/data if present."""
    candidate = path or DataSettings().data_dir
    if (candidate / "routellm").exists() or (candidate / "routerbench").exists():
        return candidate
    fallback = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if path is None and (fallback / "routellm").exists():
        return fallback
    raise FileNotFoundError(f"no benchmark data under {candidate}; set SWITCHYARD_DATA_DIR or --data-dir")


def build_app(settings: EmulatorSettings) -> EmulatorApp:
    """Load corpus, catalog and start config, and return the ASGI app (lookups precomputed)."""
    t0 = time.perf_counter()
    corpus = Corpus.load(resolve_data_dir(settings.data_dir), settings.datasets, settings.corpus_cache_dir())
    emulator = Emulator(
        corpus,
        load_catalog(settings.catalog),
        load_config(settings.config),
        speed=settings.speed,
        seed=settings.seed,
    )
    app = EmulatorApp(emulator, chunk_words=settings.chunk_words, api_key=settings.api_key)
    log.info(
        "emulator: %d prompts, %d models loaded in %.1fs",
        len(corpus),
        len(emulator.models),
        time.perf_counter() - t0,
    )
    return app


class _DropStreamCuts(logging.Filter):
    """Injected stream cuts are expected: keep their tracebacks out of the server log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, StreamCut)


def serve(settings: EmulatorSettings) -> None:
    """Serve until interrupted (on ``settings.fd`` if given, else on host:port)."""
    import uvicorn

    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=settings.log_level,
        backlog=4096,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_DropStreamCuts())
    if settings.fd is not None:
        sock = socket.socket(fileno=settings.fd)
        host, port = sock.getsockname()[:2]
        log.info("emulator serving on http://%s:%d (inherited socket)", host, port)
        server.run(sockets=[sock])
    else:
        log.info("emulator serving on http://%s:%d", settings.host, settings.port)
        server.run()

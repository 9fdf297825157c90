"""``python -m infra.emulator ...``: the emulator CLI without the rest of ``switchyard``."""

import logging

from .cli import emulator_app

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    emulator_app(prog_name="switchyard emulator")

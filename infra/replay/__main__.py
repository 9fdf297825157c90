"""``python -m infra.replay ...``: the replay CLI without the rest of ``switchyard``."""

import logging

from .cli import replay_app

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    replay_app(prog_name="switchyard replay")

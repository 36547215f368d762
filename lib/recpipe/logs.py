"""Log lines carry the time and the stage: `2026-11-21 13:45:02 INFO recpipe.clean | ...`."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s | %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once; quieten libraries that log every request."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT, force=True)
    for noisy in ("py4j", "urllib3", "alembic", "matplotlib", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

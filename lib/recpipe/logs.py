"""One layout for every log line, recpipe's, MLflow's and Spark's alike:
`2026-11-21 13:45:02 INFO recpipe.clean: ...` (Spark names the class: `WARN DAGScheduler: ...`).

Spark's JVM logs through log4j2 with `log4j2.properties` beside this module, which
`spark_java_options` hands to the driver and the executors.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Mapping

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG4J2_PROPERTIES = Path(__file__).resolve().with_name("log4j2.properties")
DRIVER_OPTIONS, EXECUTOR_OPTIONS = "spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"
MLFLOW_LOGGERS = ("mlflow", "alembic", "huey", "sqlalchemy.engine")  # those MLflow gives its own handler


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once; quieten libraries that log every request."""
    _mlflow_through_root()
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT, force=True)
    logging.captureWarnings(True)  # a library's warning as one log line, not two bare ones
    for noisy in ("py4j", "urllib3", "alembic", "sqlalchemy", "huey", "matplotlib", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _mlflow_through_root() -> None:
    """MLflow's lines through the root logger's handler; its artifact bars only on a terminal."""
    # When imported, MLflow gives its loggers a handler of its own, with dates written
    # 2026/11/21: it is told not to, or relieved of that handler when it came first.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if "mlflow" in sys.modules:
        for name in MLFLOW_LOGGERS:
            logging.getLogger(name).handlers = []
            logging.getLogger(name).propagate = True
    if not stderr_is_terminal():  # a tqdm bar per artifact upload or download
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: only there may a progress bar redraw itself with
    carriage returns; in a log file each redraw would pile onto one line."""
    return bool(getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())


def spark_java_options(configured: Mapping[str, object]) -> dict[str, str]:
    """The driver's and executors' extraJavaOptions: recpipe's log4j2 configuration first,
    then what `configured` (the Spark settings of the config) already says, which wins
    where both set a property (the JVM keeps the last -D of a name).

    Empty when the file is not on disk (recpipe imported from a zip): Spark's own defaults
    then apply. An executor on a machine without the file falls back to them too.
    """
    if not LOG4J2_PROPERTIES.is_file():
        return {}
    ours = shlex.quote(f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES}")
    # An executor's log is a file on its worker, read when a task fails: it keeps Spark's INFO lines.
    options = {DRIVER_OPTIONS: ours, EXECUTOR_OPTIONS: f"{ours} -Drecpipe.log4j2.level=info"}
    return {key: " ".join(filter(None, (value, str(configured.get(key, ""))))) for key, value in options.items()}

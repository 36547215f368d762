"""Errors that recpipe reports to its users as one line, without a traceback."""


class RecpipeError(Exception):
    """A failure the user can act on; the CLI prints its message and exits non-zero."""


class ConfigError(RecpipeError):
    """A configuration file, key, value or override is wrong; the message names it."""


class DataError(RecpipeError):
    """Input or output data breaks a contract (missing column, failed reconciliation)."""

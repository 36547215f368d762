"""recpipe: a nightly, distributed recommendation pipeline."""

__version__ = "0.1.0"

"""Files the generator writes: gzipped JSON lines, Parquet and JSON, byte for byte
reproducible (gzip without a timestamp, no wall-clock metadata anywhere)."""

from __future__ import annotations

import gzip
import json
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recpipe.generate.tokens import lines_blob, render_lines
from recpipe.paths import join_uri, write_bytes

PARQUET_COMPRESSION = "zstd"


class GzipWriter:
    """Gzips and writes files on one background thread, at most one file behind.

    zlib releases the GIL, so compressing one part overlaps rendering the next (or the
    next day's simulation); waiting for the previous file before queueing another keeps
    at most two parts' text in memory.
    """

    def __init__(self, level: int):
        self.level = level
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gzip")
        self._pending: Future | None = None

    def submit(self, location: str, data: bytes) -> None:
        self.wait()
        self._pending = self._pool.submit(self._write, location, data)

    def wait(self) -> None:
        """Block until the queued file is written; re-raise its error, if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, location: str, data: bytes) -> None:
        # mtime=0: equal input gives equal bytes.
        write_bytes(location, gzip.compress(data, compresslevel=self.level, mtime=0))

    def __enter__(self) -> "GzipWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def write_json_lines_parts(writer: GzipWriter, folder: str, records: pa.Table, fields: tuple[str, ...],
                           per_file: int, order: np.ndarray | None = None, suffix: str = ".json.gz") -> int:
    """Render `records` to `part-NNNNN<suffix>` files of at most `per_file` lines each.

    Args:
        writer: compresses and writes the parts.
        folder: where the parts go.
        records: token table (see `tokens.render_lines`).
        fields: the JSON fields, in line order.
        per_file: most lines in one part.
        order: the rows to write, in file order (default: all rows as they are). Each
            part gathers and renders only its own rows, so one part's text is in memory.
        suffix: file name ending.

    Returns:
        The number of part files; a folder with no rows still gets one empty part, so the
        day exists for readers.
    """
    rows = np.arange(records.num_rows) if order is None else order
    n_parts = max(1, -(-len(rows) // per_file))
    for part in range(n_parts):
        chunk = records.take(pa.array(rows[part * per_file: (part + 1) * per_file]))
        blob = lines_blob(render_lines(chunk, fields)) if chunk.num_rows else b""
        writer.submit(join_uri(folder, f"part-{part:05d}{suffix}"), blob)
    return n_parts


def write_parquet(location: str, table: pa.Table) -> None:
    """One Parquet file (zstd, as every table of the lake)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=PARQUET_COMPRESSION)
    write_bytes(location, sink.getvalue().to_pybytes())


def write_json(location: str, obj: dict) -> None:
    """Indented JSON with a final newline."""
    write_bytes(location, (json.dumps(obj, indent=2) + "\n").encode())

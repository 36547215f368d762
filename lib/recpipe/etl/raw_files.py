"""The raw files of a day, checked before Spark reads them.

Hadoop's gzip codec fails the whole job on one bad file (`not a gzip file`, a truncated
member, a zero-byte `.gz`), and `spark.sql.files.ignoreCorruptFiles` would instead keep
the lines read before the damage and drop the rest without a word. Neither accounts for
the file. So every `.gz` file is decompressed to its end first, in Spark tasks on the executors
(zlib checks each member's CRC and length); a file that fails is quarantined: left where
it is, read by nobody, and recorded in the quality report with its name, size, the reason
`corrupt_file` and the error. The day's other files are cleaned as usual.

Spark has no built-in that says whether a compressed file is whole, hence the Python
check; it reads each file once more, in parallel on the executors, which is the cost of
knowing.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib

import pyarrow.fs as pafs
from pyspark.sql import SparkSession

from recpipe import paths

CORRUPT_FILE = "corrupt_file"
GZIP_SUFFIX = ".gz"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class RawFile:
    location: str
    size: int

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]


def list_files(folder: str) -> list[RawFile]:
    """The files Spark would read in `folder`: not hidden (`_`, `.`), sorted by name."""
    fs, root = paths.filesystem_for(folder)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type == pafs.FileType.File and not info.base_name.startswith(("_", ".")):
            found.append(RawFile(paths.join_uri(folder, info.base_name), info.size))
    return sorted(found, key=lambda f: f.name)


def gzip_problem(location: str, size: int) -> str | None:
    """Why a `.gz` file cannot be read to its end, or None when it can."""
    if size == 0:
        return "empty file: a gzip file has at least a header"
    fs, path = paths.filesystem_for(location)
    try:
        with fs.open_input_stream(path, compression=None) as raw, gzip.GzipFile(fileobj=raw) as stream:
            while stream.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        return f"{type(err).__name__}: {err}"
    return None


def check_files(spark: SparkSession, files: list[RawFile]) -> tuple[list[RawFile], list[dict]]:
    """Split `files` into the readable ones and quarantine records for the others.

    Returns:
        The files to read, and for each bad one `{"file", "bytes", "reason", "error"}`.
    """
    compressed = [f for f in files if f.name.endswith(GZIP_SUFFIX)]
    problems = {}
    if compressed:
        # A few files per task: a whole-history clean has thousands of small day files, and a
        # task each would spend its time starting tasks.
        slices = min(len(compressed), max(2 * spark.sparkContext.defaultParallelism, 1))
        checked = (
            spark.sparkContext
            .parallelize([(f.location, f.size) for f in compressed], slices)
            .map(lambda file: (file[0], gzip_problem(*file)))
            .collect()  # one short row per file
        )
        problems = {location: error for location, error in checked if error is not None}
    good = [f for f in files if f.location not in problems]
    quarantined = [{"file": f.location, "bytes": f.size, "reason": CORRUPT_FILE, "error": problems[f.location]}
                   for f in files if f.location in problems]
    return good, quarantined

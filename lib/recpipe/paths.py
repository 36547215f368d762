"""Locations under the data root: local paths and URIs (file://, hdfs://, s3a://).

Spark understands all of these itself. Python-side readers and writers (the generator,
JSON reports) go through `pyarrow.fs`, which understands the same URIs.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from urllib.parse import urlparse

import pyarrow.fs as pafs


def has_scheme(location: str) -> bool:
    """True for URIs such as file:///x or s3a://bucket/x; False for plain paths."""
    return len(urlparse(location).scheme) > 1  # one letter is a Windows drive, not a scheme


def normalize_root(root: str) -> str:
    """An absolute form of the data root, so that Spark, workers and tools agree on it."""
    if has_scheme(root):
        return root.rstrip("/")
    return os.path.abspath(os.path.expanduser(root))


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a local path or a URI."""
    if has_scheme(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def filesystem_for(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a local path or URI.

    pyarrow calls Hadoop's s3a scheme plain s3; the bucket and key are the same.
    """
    if not has_scheme(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    if location.startswith("s3a://"):
        location = "s3://" + location[len("s3a://"):]
    return pafs.FileSystem.from_uri(location)


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file so that a reader sees the old content or the new, never part of it.

    On a local disk (and HDFS) the bytes go to a temporary name beside the target, are
    flushed (fsync locally) and renamed over it; a crash leaves at most a stray `.tmp-*`
    file. On an object store one PUT is already whole or nothing, and its rename is a copy.
    """
    fs, path = filesystem_for(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        write_local_atomically(path, data)
        return
    if type(fs).__name__ == "S3FileSystem" or location.startswith(("gs://", "gcs://", "abfs://")):
        _put(fs, path, data)
        return
    temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _put(fs, temporary, data)
    fs.move(temporary, path)


def _put(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    # compression=None: the bytes are written as given (pyarrow would gzip a .gz name again).
    with fs.open_output_stream(path, compression=None) as out:
        out.write(data)


def write_local_atomically(path: str, data: bytes) -> None:
    """Temporary file, fsync, rename over `path`, fsync the folder (so the rename survives a crash)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_json_or_none(location: str, what: str) -> dict | None:
    """A small JSON file, or None when it is absent or unreadable (a truncated write from
    before writes were atomic, a damaged disk); an unreadable one is logged by name."""
    try:
        return json.loads(read_bytes(location))
    except FileNotFoundError:
        return None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        logging.getLogger("recpipe.paths").warning("%s %s is unreadable (%s); treating it as absent", what, location, err)
        return None


def read_bytes(location: str) -> bytes:
    fs, path = filesystem_for(location)
    with fs.open_input_stream(path, compression=None) as stream:
        return stream.read()


def exists(location: str) -> bool:
    fs, path = filesystem_for(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete_dir(location: str) -> None:
    """Remove a folder and everything under it, if it exists."""
    fs, path = filesystem_for(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)

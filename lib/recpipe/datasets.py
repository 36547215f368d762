"""The MovieLens releases the ingest reads, each pinned by sha256, and where they are on this machine.

`recpipe datasets fetch NAME` downloads a release once into the cache folder and checks it against
its pinned digest; `recpipe datasets path NAME` prints where it is (or where fetch would put it), which
is what `make report` hands to `recpipe ingest-movielens`.

The cache folder is `$RECPIPE_DATA_DIR`, else `$XDG_CACHE_HOME/recpipe/datasets`, else
`~/.cache/recpipe/datasets`. A file there was verified when it was downloaded: fetch renames it into
place only after its digest matched, so a half-written or corrupted download never has the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from recpipe.errors import ConfigError, DataError

log = logging.getLogger("recpipe.datasets")

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # per socket operation, not for the whole download
LICENCE_TERMS = ("GroupLens MovieLens licence: research use only, no commercial use without GroupLens' "
                 "permission, no implied endorsement, cite F. M. Harper and J. A. Konstan, \"The MovieLens "
                 "Datasets: History and Context\", ACM TiiS 5(4), 2015")
# The releases' own READMEs differ on redistribution; each line says what its README says.
MAY_REDISTRIBUTE = "redistribution (transformations included) only under these same terms"
NO_REDISTRIBUTION = "no redistribution without separate permission"


@dataclass(frozen=True)
class Release:
    """One MovieLens archive: its name, the sha256 of its zip (None where none is pinned) and its licence."""

    name: str
    sha256: str | None
    redistribution: str
    readme: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.zip"

    @property
    def url(self) -> str:
        return f"{GROUPLENS_URL}/{self.file_name}"

    @property
    def licence(self) -> str:
        return f"{LICENCE_TERMS}; {self.redistribution}; see {self.readme}"


def _release(name: str, sha256: str | None, redistribution: str, readme_suffix: str = "-README.html") -> Release:
    return Release(name, sha256, redistribution, f"{GROUPLENS_URL}/{name}{readme_suffix}")


# Where the digests come from:
# - ml-latest-small: sha256sum of the GroupLens archive the CI keeps under ../shared/datasets (978,202
#   bytes); the same digest and size are in TensorFlow Datasets' url_checksums/movielens.txt.
# - ml-100k, ml-1m, ml-20m, ml-25m: TensorFlow Datasets' url_checksums/movielens.txt (digest and size
#   of the GroupLens URLs), the same digests as other public projects pin for those URLs; not
#   recomputed here, as this machine cannot download them.
# - ml-10m: no published sha256 was found (GroupLens publishes only ml-10m.zip.md5), so none is pinned.
# - ml-latest: GroupLens regenerates it from time to time (its README calls it a development data
#   set), so a pinned digest would go stale; none is pinned.
# An unpinned release is fetched only with a digest the user passes (`--sha256`).
RELEASES: dict[str, Release] = {release.name: release for release in (
    _release("ml-latest-small", "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", MAY_REDISTRIBUTE),
    _release("ml-latest", None, MAY_REDISTRIBUTE),
    _release("ml-100k", "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", NO_REDISTRIBUTION,
             "-README.txt"),
    _release("ml-1m", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", NO_REDISTRIBUTION,
             "-README.txt"),
    _release("ml-10m", None, NO_REDISTRIBUTION),
    _release("ml-20m", "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3", NO_REDISTRIBUTION),
    _release("ml-25m", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa", NO_REDISTRIBUTION),
)}


def release(name: str) -> Release:
    """The registered release called `name`; ConfigError naming the known ones otherwise."""
    try:
        return RELEASES[name]
    except KeyError:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(RELEASES)}") from None


def cache_dir() -> Path:
    """Where fetch puts the archives: $RECPIPE_DATA_DIR, else the user's cache folder (XDG)."""
    if os.environ.get("RECPIPE_DATA_DIR"):
        return Path(os.environ["RECPIPE_DATA_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores a relative one
    return base / "recpipe" / "datasets"


def shared_dir() -> Path | None:
    """The CI's copy of the data sets, `../shared/datasets` beside this source checkout, if there is one.

    A documented fallback for this project's CI, which supplies the archives there instead of a
    download. Only a source checkout (or an editable install of one) has it: there this file is
    `lib/recpipe/datasets.py` under the repository root, while an installed copy sits in site-packages.
    """
    package = Path(__file__).resolve().parent
    if package.parent.name != "lib":
        return None
    shared = package.parent.parent.parent / "shared" / "datasets"  # the repository root's sibling
    return shared if shared.is_dir() else None


def locate(name: str) -> Path | None:
    """Where the archive of `name` already is: the cache folder, else the CI's shared copy, else None."""
    file_name = release(name).file_name
    for folder in (cache_dir(), shared_dir()):
        if folder is not None and (folder / file_name).is_file():
            return folder / file_name
    return None


def path(name: str) -> Path:
    """What `recpipe datasets path NAME` prints: where the archive is, or where fetch would put it."""
    return locate(name) or cache_dir() / release(name).file_name


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as data:
        while chunk := data.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def expected_digest(chosen: Release, sha256: str | None) -> str:
    """The digest a download must have: the pinned one, or the user's for a release without one."""
    given = sha256.strip().lower() if sha256 else None
    if chosen.sha256 and given and given != chosen.sha256:
        raise ConfigError(f"{chosen.name}: --sha256 {given} differs from the pinned {chosen.sha256}")
    if not (chosen.sha256 or given):
        raise ConfigError(f"{chosen.name}: no sha256 is pinned for this release, so it is not downloaded "
                          f"unverified; check the archive yourself and pass its digest with --sha256")
    return chosen.sha256 or given


def fetch(name: str, url: str | None = None, data_dir: Path | None = None, sha256: str | None = None) -> Path:
    """The archive of `name` in the cache folder, downloaded and verified first if it is not there.

    Args:
        name: a registered release, e.g. "ml-latest-small".
        url: where to download it from instead of GroupLens (a mirror); the digest still applies.
        data_dir: the cache folder (default `cache_dir()`).
        sha256: the digest to check, for a release without a pinned one.

    Raises:
        ConfigError: unknown release, or no digest to check against.
        DataError: the download failed, was cut short, or has another digest; nothing is left behind.
    """
    chosen = release(name)
    expected = expected_digest(chosen, sha256)
    folder = Path(data_dir) if data_dir is not None else cache_dir()
    target = folder / chosen.file_name
    if target.is_file():
        cached = file_sha256(target)
        if cached == expected:
            return target
        log.warning("%s has sha256 %s, not %s: downloading it again", target, cached, expected)
    folder.mkdir(parents=True, exist_ok=True)
    source = url or chosen.url
    partial = folder / f"{chosen.file_name}.part"
    try:
        actual = download(source, partial)
        if actual != expected:
            raise DataError(f"{source}: sha256 mismatch for {chosen.file_name}: expected {expected}, got {actual}; "
                            f"the download was deleted")
        os.replace(partial, target)  # same folder, so atomic: the final name appears only when complete
    finally:
        partial.unlink(missing_ok=True)
    log.info("%s verified (sha256 %s) at %s", source, expected, target)
    return target


def download(url: str, destination: Path) -> str:
    """Stream `url` into `destination`; its sha256. DataError when the transfer fails or ends early."""
    log.info("downloading %s to %s", url, destination)
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(destination, "wb") as out:
            announced = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError and timeouts are OSErrors
        raise DataError(f"{url}: download failed after {received:,} bytes: {type(err).__name__}: {err}") from None
    # http.client returns a short body without complaint when the server closes early: count the bytes.
    if announced is not None and received != int(announced):
        raise DataError(f"{url}: download cut short: the connection closed after {received:,} of {int(announced):,} "
                        f"bytes; nothing was kept, fetch again")
    return digest.hexdigest()

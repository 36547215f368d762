"""`recpipe.datasets`: fetch from a real HTTP server on 127.0.0.1 (a zip built here, never the
internet): the verified file lands once and is reused, a wrong digest or a cut-short transfer keeps
nothing, and `recpipe datasets path` prints the cached, shared or would-be location."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from recpipe import cli, datasets
from recpipe.errors import ConfigError, DataError
from tests.conftest import LOCAL_CONF, free_port

pytestmark = pytest.mark.timeout(60)

NAME = "ml-test"


def small_zip() -> bytes:
    """A MovieLens-shaped archive of a few lines, a few hundred bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{NAME}/ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.5,964982703\n")
        archive.writestr(f"{NAME}/movies.csv", "movieId,title,genres\n10,Heat (1995),Action|Crime\n")
    return buffer.getvalue()


ARCHIVE = small_zip()
ARCHIVE_SHA256 = hashlib.sha256(ARCHIVE).hexdigest()


@dataclass
class Served:
    """What the test server hands out, and what it was asked for."""

    url: str = ""
    body: bytes = ARCHIVE
    cut_short: int = 0  # how many of the next responses announce the whole body but send half of it
    requests: list[str] = field(default_factory=list)


def handler_for(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(served.body)))
            self.end_headers()
            if served.cut_short:
                served.cut_short -= 1
                self.wfile.write(served.body[: len(served.body) // 2])
            else:
                self.wfile.write(served.body)
            self.close_connection = True  # HTTP/1.0: the connection closes after each response

        def log_message(self, format: str, *args) -> None:  # keep the test output quiet
            pass

    return Handler


@pytest.fixture
def server(monkeypatch):
    """An HTTP server on a free port of 127.0.0.1 in a thread, stopped after the test."""
    monkeypatch.setattr(datasets, "TIMEOUT_S", 5)  # a hung transfer fails the test in seconds
    served = Served()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler_for(served))
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}/{NAME}.zip"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def pinned(monkeypatch):
    """Register the test release, pinned to `digest` (the served archive's by default)."""

    def register(digest: str | None = ARCHIVE_SHA256) -> datasets.Release:
        release = datasets.Release(NAME, digest, datasets.MAY_REDISTRIBUTE, "https://example.invalid/README")
        monkeypatch.setitem(datasets.RELEASES, NAME, release)
        return release

    return register


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder as $RECPIPE_DATA_DIR, and no CI copy to fall back on."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RECPIPE_DATA_DIR", str(folder))
    monkeypatch.setattr(datasets, "shared_dir", lambda: None)
    return folder


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_verified_download_lands_once_and_is_reused(server, pinned, cache):
    pinned()
    fetched = datasets.fetch(NAME, url=server.url)
    assert fetched == cache / f"{NAME}.zip" and fetched.read_bytes() == ARCHIVE
    assert files_in(cache) == [f"{NAME}.zip"]  # no .part left behind
    assert datasets.fetch(NAME, url=server.url) == fetched
    assert len(server.requests) == 1  # the second fetch found it in the cache
    assert datasets.locate(NAME) == fetched and datasets.path(NAME) == fetched


def test_a_wrong_digest_names_both_and_keeps_nothing(server, pinned, cache):
    expected = hashlib.sha256(b"another archive").hexdigest()
    pinned(expected)
    with pytest.raises(DataError) as raised:
        datasets.fetch(NAME, url=server.url)
    message = str(raised.value)
    assert expected in message and ARCHIVE_SHA256 in message and server.url in message
    assert files_in(cache) == []
    assert datasets.locate(NAME) is None


def test_a_cut_short_download_keeps_nothing_and_a_later_fetch_works(server, pinned, cache):
    pinned()
    server.cut_short = 1
    with pytest.raises(DataError, match=f"cut short.*{len(ARCHIVE) // 2} of {len(ARCHIVE)} bytes"):
        datasets.fetch(NAME, url=server.url)
    assert files_in(cache) == []
    assert datasets.fetch(NAME, url=server.url).read_bytes() == ARCHIVE
    assert len(server.requests) == 2 and files_in(cache) == [f"{NAME}.zip"]


def test_a_cached_file_with_another_digest_is_downloaded_again(server, pinned, cache):
    pinned()
    cache.mkdir()
    (cache / f"{NAME}.zip").write_bytes(b"not the archive")
    assert datasets.fetch(NAME, url=server.url).read_bytes() == ARCHIVE
    assert len(server.requests) == 1


def test_an_unreachable_server_is_a_clear_error(pinned, cache, monkeypatch):
    monkeypatch.setattr(datasets, "TIMEOUT_S", 5)
    pinned()
    url = f"http://127.0.0.1:{free_port()}/{NAME}.zip"  # nothing listens there
    with pytest.raises(DataError, match="download failed"):
        datasets.fetch(NAME, url=url)
    assert files_in(cache) == []


def test_a_release_without_a_pinned_digest_needs_one_from_the_user(server, pinned, cache):
    pinned(None)
    with pytest.raises(ConfigError, match="no sha256 is pinned.*--sha256"):
        datasets.fetch(NAME, url=server.url)
    assert server.requests == []  # refused before any download
    assert datasets.fetch(NAME, url=server.url, sha256=ARCHIVE_SHA256.upper()).read_bytes() == ARCHIVE


def test_a_user_digest_may_not_contradict_the_pinned_one(pinned, cache):
    pinned()
    with pytest.raises(ConfigError, match="differs from the pinned"):
        datasets.fetch(NAME, sha256="0" * 64)


def test_every_pinned_digest_is_a_sha256():
    for release in datasets.RELEASES.values():
        assert release.url == f"https://files.grouplens.org/datasets/movielens/{release.name}.zip"
        assert release.sha256 is None or (len(release.sha256) == 64 and int(release.sha256, 16) >= 0)
        assert "Harper" in release.licence and release.readme in release.licence


def test_cache_dir_follows_xdg_without_recpipe_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("RECPIPE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.cache_dir() == tmp_path / "xdg" / "recpipe" / "datasets"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # not absolute: ignored, as the XDG spec says
    assert datasets.cache_dir() == Path.home() / ".cache" / "recpipe" / "datasets"


def recpipe_datasets(capsys, *args: str) -> tuple[int, list[str]]:
    """`recpipe datasets ARGS` through cli.main: its exit code and its stdout lines."""
    code = cli.main(["datasets", *args, "--conf", str(LOCAL_CONF)])
    return code, capsys.readouterr().out.splitlines()


def test_path_prints_the_cached_file_else_the_shared_copy_else_where_fetch_puts_it(cache, tmp_path, monkeypatch,
                                                                                  capsys):
    assert recpipe_datasets(capsys, "path", "ml-latest-small") == (0, [str(cache / "ml-latest-small.zip")])
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "ml-latest-small.zip").write_bytes(b"the CI copy")
    monkeypatch.setattr(datasets, "shared_dir", lambda: shared)
    assert recpipe_datasets(capsys, "path", "ml-latest-small") == (0, [str(shared / "ml-latest-small.zip")])
    cache.mkdir()
    (cache / "ml-latest-small.zip").write_bytes(b"fetched")
    assert recpipe_datasets(capsys, "path", "ml-latest-small") == (0, [str(cache / "ml-latest-small.zip")])


def test_fetch_prints_the_path_and_the_licence(server, pinned, cache, capsys):
    release = pinned()
    assert recpipe_datasets(capsys, "fetch", NAME, "--url", server.url) == (
        0, [str(cache / f"{NAME}.zip"), release.licence])


def test_fetch_of_an_unpinned_release_exits_2_naming_the_option(pinned, cache, capsys):
    pinned(None)
    assert cli.main(["datasets", "fetch", NAME, "--conf", str(LOCAL_CONF)]) == 2
    assert "--sha256" in capsys.readouterr().err

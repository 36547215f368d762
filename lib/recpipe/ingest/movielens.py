"""`recpipe ingest-movielens --source PATH`: MovieLens in its own formats → the raw
behaviour-log format and item catalogue, so the unchanged pipeline runs on it.

Formats (from a folder or a zip, files found at any depth):
- ml-latest, ml-latest-small, ml-20m, ml-25m: `ratings.csv` (userId,movieId,rating,timestamp)
  and `movies.csv` (movieId,title,genres with '|'), CSV with a header;
- ml-100k: `u.data` (user item rating timestamp, tab-separated) and `u.item`
  ('|'-separated, 19 genre flags, latin-1);
- ml-1m, ml-10m: `ratings.dat` and `movies.dat`, fields separated by '::'.

Label rule of the DIN paper's MovieLens setup: every rating is an impression of the movie;
a rating of 4 or more is also a click (same request, one second later). Events go to
`raw/events/dt=D` by the rating's UTC day. A category is the movie's first genre.
Malformed lines are counted per reason and reported, never fatal.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import logging
import os
import zipfile
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from recpipe.config import Config
from recpipe.errors import DataError
from recpipe import paths
from recpipe.paths import join_uri, write_bytes

log = logging.getLogger("recpipe.ingest")

CLICK_MIN_RATING = 4.0
CLICK_DELAY_MS = 1000
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
NO_GENRE = "(no genres listed)"

# format name → (ratings file, movies file)
FORMATS = {
    "csv": ("ratings.csv", "movies.csv"),
    "100k": ("u.data", "u.item"),
    "dat": ("ratings.dat", "movies.dat"),
}


@dataclass
class Ratings:
    """Parsed ratings as compact typed arrays, and what could not be parsed."""

    users: array = field(default_factory=lambda: array("q"))
    movies: array = field(default_factory=lambda: array("q"))
    ratings: array = field(default_factory=lambda: array("d"))
    seconds: array = field(default_factory=lambda: array("q"))
    malformed: Counter = field(default_factory=Counter)


class Source:
    """The files of a MovieLens release in a folder or a zip."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise DataError(f"ingest-movielens: source {path} does not exist")
        self.path = path
        self.zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
        names = self.zip.namelist() if self.zip else [
            os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files]
        self.files = {os.path.basename(n): n for n in sorted(names, key=len, reverse=True) if not n.endswith("/")}
        self.format = next((name for name, (r, m) in FORMATS.items() if r in self.files and m in self.files), None)
        if self.format is None:
            wanted = " or ".join(f"{r} + {m}" for r, m in FORMATS.values())
            raise DataError(f"ingest-movielens: {path} holds none of the MovieLens layouts ({wanted})")

    def lines(self, base_name: str, encoding: str) -> Iterator[str]:
        name = self.files[base_name]
        raw = self.zip.open(name) if self.zip else open(os.path.join(self.path, name), "rb")
        with io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="") as text:
            for line in text:
                yield line.rstrip("\r\n")


def parse_rating(fields: list[str], out: Ratings) -> None:
    """Append one rating or count why it is malformed."""
    if len(fields) != 4:
        out.malformed["field_count"] += 1
        return
    try:
        user, movie, rating, seconds = int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
    except ValueError:
        out.malformed["not_a_number"] += 1
        return
    if not 0.0 <= rating <= 5.0 or seconds < 0:
        out.malformed["out_of_range"] += 1
        return
    out.users.append(user)
    out.movies.append(movie)
    out.ratings.append(rating)
    out.seconds.append(seconds)


def read_ratings(source: Source) -> Ratings:
    out = Ratings()
    ratings_file, _ = FORMATS[source.format]
    if source.format == "csv":
        rows = csv.reader(source.lines(ratings_file, "utf-8"))
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["userId", "movieId"]:
            raise DataError(f"ingest-movielens: {ratings_file} does not start with the header userId,movieId,...")
        for row in rows:
            if row:
                parse_rating(row, out)
    else:
        separator, encoding = ("\t", "latin-1") if source.format == "100k" else ("::", "latin-1")
        for line in source.lines(ratings_file, encoding):
            if line.strip():
                parse_rating(line.split(separator), out)
    return out


def read_movies(source: Source, malformed: Counter) -> dict[int, tuple[str, str | None]]:
    """movieId → (title, category = first genre, None when it has none)."""
    _, movies_file = FORMATS[source.format]
    movies: dict[int, tuple[str, str | None]] = {}
    if source.format == "csv":
        rows = csv.reader(source.lines(movies_file, "utf-8"))
        next(rows, None)
        parsed = ((r[0], r[1], r[2].split("|")) if len(r) == 3 else None for r in rows if r)
    elif source.format == "100k":
        def flags(fields: list[str]):
            if len(fields) != 5 + len(ML100K_GENRES):
                return None
            return fields[0], fields[1], [g for g, f in zip(ML100K_GENRES, fields[5:]) if f.strip() == "1"]
        parsed = (flags(line.split("|")) for line in source.lines(movies_file, "latin-1") if line.strip())
    else:
        parsed = ((f[0], f[1], f[2].split("|")) if len(f) == 3 else None
                  for f in (line.split("::") for line in source.lines(movies_file, "latin-1") if line.strip()))
    for row in parsed:
        try:
            movie = int(row[0]) if row else None
        except ValueError:
            movie = None
        if movie is None:
            malformed["movies"] += 1
            continue
        genres = [g for g in row[2] if g and g not in (NO_GENRE, "unknown")]
        movies[movie] = (row[1], genres[0] if genres else None)
    return movies


def event_lines(users: np.ndarray, movies: np.ndarray, ratings: np.ndarray, ms: np.ndarray) -> Iterable[str]:
    """The JSON lines of some ratings: an impression each, and a click for the liked ones."""
    for user, movie, rating, ts in zip(users.tolist(), movies.tolist(), ratings.tolist(), ms.tolist()):
        request = f"r{user}-{movie}-{ts}"
        common = {"user_id": f"u{user}", "item_id": f"m{movie}", "session_id": f"s{user}-{ts // 86_400_000}",
                  "request_id": request, "position": 0, "device": "movielens"}
        yield json.dumps({"event_id": f"{request}-i", "event_type": "impression", "ts": ts, **common})
        if rating >= CLICK_MIN_RATING:
            yield json.dumps({"event_id": f"{request}-c", "event_type": "click", "ts": ts + CLICK_DELAY_MS, **common})


def ingest(cfg: Config, source_path: str) -> dict:
    """Write the raw events (one folder per UTC day) and the catalogue; return the report."""
    source = Source(source_path)
    if paths.exists(cfg.table_path("raw_events")):
        raise DataError(f"ingest-movielens: raw events already exist at {cfg.table_path('raw_events')}; "
                        "ingest into a fresh paths.root")
    parsed = read_ratings(source)
    movies = read_movies(source, parsed.malformed)
    users, items = np.frombuffer(parsed.users, np.int64), np.frombuffer(parsed.movies, np.int64)
    ratings, ms = np.frombuffer(parsed.ratings, np.float64), np.frombuffer(parsed.seconds, np.int64) * 1000
    order = np.lexsort((items, users, ms))
    days = ms[order] // 86_400_000
    bounds = np.flatnonzero(np.r_[True, days[1:] != days[:-1], True])
    for start, end in zip(bounds[:-1], bounds[1:]):
        rows = order[start:end]
        day = dt.date(1970, 1, 1) + dt.timedelta(days=int(days[start]))
        text = "\n".join(event_lines(users[rows], items[rows], ratings[rows], ms[rows])) + "\n"
        write_bytes(join_uri(cfg.table_path("raw_events", day), "part-00000.json.gz"),
                    gzip.compress(text.encode(), compresslevel=1, mtime=0))
    write_catalogue(cfg, movies)
    report = {
        "source": os.path.abspath(source_path),
        "format": source.format,
        "ratings": int(len(users)),
        "impressions": int(len(users)),
        "clicks": int((ratings >= CLICK_MIN_RATING).sum()),
        "users": int(len(np.unique(users))),
        "rated_movies": int(len(np.unique(items))),
        "catalogue_items": len(movies),
        "days": int(len(bounds) - 1),
        "first_day": _day(ms.min()) if len(ms) else None,
        "last_day": _day(ms.max()) if len(ms) else None,
        "malformed": dict(sorted(parsed.malformed.items())),
    }
    write_bytes(cfg.table_path("ingest_report"), (json.dumps(report, indent=2) + "\n").encode())
    log.info("ingested %s (%s): %d ratings, %d clicks, %d movies, %d days, malformed %s", source_path,
             source.format, report["ratings"], report["clicks"], report["catalogue_items"], report["days"],
             report["malformed"] or "none")
    return report


def _day(ms: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(ms) // 86_400_000)).isoformat()


def write_catalogue(cfg: Config, movies: dict[int, tuple[str, str | None]]) -> None:
    lines = (json.dumps({"item_id": f"m{movie}", "category": category, "brand": None, "price": None, "title": title})
             for movie, (title, category) in sorted(movies.items()))
    text = "\n".join(lines) + "\n"
    write_bytes(join_uri(cfg.table_path("raw_items"), "part-00000.jsonl.gz"),
                gzip.compress(text.encode(), compresslevel=1, mtime=0))

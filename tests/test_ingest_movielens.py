"""MovieLens → raw behaviour logs: the three source formats (folder and zip), malformed
lines counted, the DIN label rule, and the real ml-latest-small release."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from recpipe.errors import DataError
from recpipe.ingest.movielens import ingest
from tests.conftest import movielens_zip

# Same four ratings in every format: user 1 likes movie 10 (4.5) and not 20 (2.0); user 2
# gives movie 10 a 4.0 (a click: the threshold is inclusive) and movie 30 a 3.5. The last
# two ratings fall on the next UTC day.
DAY1, DAY2 = 964_982_703, 964_982_703 + 86_400
CSV_RATINGS = f"""userId,movieId,rating,timestamp
1,10,4.5,{DAY1}
1,20,2.0,{DAY1 + 60}
2,10,4.0,{DAY2}
2,30,3.5,{DAY2 + 5}
2,abc,3.0,{DAY2}
3,10,4.0
"""
CSV_MOVIES = """movieId,title,genres
10,"Heat, the Movie (1995)",Action|Crime|Thriller
20,Toy Story (1995),Animation|Children
30,Unknown Film (2000),(no genres listed)
"""
DAT_RATINGS = f"1::10::4.5::{DAY1}\n1::20::2::{DAY1 + 60}\n2::10::4::{DAY2}\n2::30::3.5::{DAY2 + 5}\nbroken line\n"
DAT_MOVIES = "10::Heat (1995)::Action|Crime\n20::Toy Story (1995)::Animation\n30::Unknown (2000)::(no genres listed)\n"
U_DATA = f"1\t10\t5\t{DAY1}\n1\t20\t2\t{DAY1 + 60}\n2\t10\t4\t{DAY2}\n2\t30\t3\t{DAY2 + 5}\n2\t30\t3\n"
FLAGS = lambda *on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
U_ITEM = (f"10|Heat (1995)|01-Jan-1995||http://x|{FLAGS(1, 6)}\n20|Toy Story (1995)|01-Jan-1995||http://x|{FLAGS(3)}\n"
          f"30|Unknown (2000)|01-Jan-2000||http://x|{FLAGS(0)}\n")

LAYOUTS = {
    "csv": {"ratings.csv": CSV_RATINGS, "movies.csv": CSV_MOVIES},
    "dat": {"ratings.dat": DAT_RATINGS, "movies.dat": DAT_MOVIES},
    "100k": {"u.data": U_DATA, "u.item": U_ITEM},
}
MALFORMED = {"csv": {"not_a_number": 1, "field_count": 1}, "dat": {"field_count": 1}, "100k": {"field_count": 1}}


def write_layout(folder: Path, files: dict[str, str], as_zip: bool) -> Path:
    if as_zip:
        archive = folder / "ml.zip"
        with zipfile.ZipFile(archive, "w") as z:
            for name, text in files.items():
                z.writestr(f"ml-test/{name}", text.encode("latin-1" if name.startswith("u.") else "utf-8"))
        return archive
    (folder / "ml-test").mkdir()
    for name, text in files.items():
        (folder / "ml-test" / name).write_text(text)
    return folder


def read_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for part in sorted(folder.rglob("*.gz")) for line in gzip.open(part, "rt") if line.strip()]


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_format_gives_an_impression_per_rating_and_a_click_for_four_or_more(layout, as_zip, make_config, tmp_path):
    cfg = make_config()
    report = ingest(cfg, str(write_layout(tmp_path, LAYOUTS[layout], as_zip)))
    assert report["format"] == layout and report["ratings"] == 4 and report["clicks"] == 2
    assert report["malformed"] == MALFORMED[layout]
    assert report["days"] == 2 and report["catalogue_items"] == 3

    events = read_lines(Path(cfg.table_path("raw_events")))
    impressions = [e for e in events if e["event_type"] == "impression"]
    clicks = [e for e in events if e["event_type"] == "click"]
    assert len(impressions) == 4
    assert {(c["user_id"], c["item_id"]) for c in clicks} == {("u1", "m10"), ("u2", "m10")}
    for click in clicks:  # attributable: same request, after its impression
        shown = next(i for i in impressions if i["request_id"] == click["request_id"])
        assert click["ts"] > shown["ts"]
    assert len({e["event_id"] for e in events}) == len(events)
    day_two = read_lines(Path(cfg.table_path("raw_events")) / "dt=2000-07-31")
    assert {e["user_id"] for e in day_two} == {"u2"}

    catalogue = {c["item_id"]: c for c in read_lines(Path(cfg.table_path("raw_items")))}
    assert catalogue["m10"]["category"] == "Action" and catalogue["m30"]["category"] is None
    assert json.loads(Path(cfg.table_path("ingest_report")).read_text()) == report


def test_an_unknown_layout_and_a_second_ingest_are_refused(make_config, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="none of the MovieLens layouts"):
        ingest(make_config(), str(tmp_path / "empty"))
    cfg = make_config()
    source = write_layout(tmp_path, LAYOUTS["csv"], as_zip=True)
    ingest(cfg, str(source))
    with pytest.raises(DataError, match="already exist"):
        ingest(cfg, str(source))


def test_ml_latest_small_ingests_every_rating(make_config):
    # That the pipeline then cleans all of it without a reject is shown by the
    # whole-history run in tests/test_movielens_report.py.
    cfg = make_config()
    report = ingest(cfg, str(movielens_zip()))
    assert report["impressions"] == 100_836 and report["catalogue_items"] == 9_742
    assert report["clicks"] == 48_580 and report["users"] == 610 and report["malformed"] == {}
    assert (report["first_day"], report["last_day"], report["days"]) == ("1996-03-29", "2018-09-24", 4_110)

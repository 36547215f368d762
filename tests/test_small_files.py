"""Small files (markers, reports, pointers) are replaced whole or not at all, and an
unreadable one is reported by name and treated as absent."""

from __future__ import annotations

import json
import logging
import os

import pytest
from recpipe import paths
from recpipe.ranker import checkpoints


def test_a_failed_write_leaves_the_previous_file_whole_and_no_temporary_behind(tmp_path, monkeypatch):
    target = tmp_path / "report" / "quality.json"
    paths.write_bytes(str(target), b'{"version": 1}')

    def crash(source, destination):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        paths.write_bytes(str(target), b'{"version": 2, "padding": "' + b"x" * 100_000 + b'"}')
    assert target.read_bytes() == b'{"version": 1}'
    assert os.listdir(target.parent) == ["quality.json"]


def test_an_unreadable_small_file_is_named_and_treated_as_absent(tmp_path, caplog):
    location = tmp_path / "marker.json"
    location.write_bytes(b'{"stage": "clean", "fin')
    with caplog.at_level(logging.WARNING):
        assert paths.read_json_or_none(str(location), "the clean marker") is None
    assert f"the clean marker {location} is unreadable" in caplog.text
    location.write_bytes(b"\xff\xfe\x00")  # not even UTF-8
    assert paths.read_json_or_none(str(location), "the clean marker") is None
    assert paths.read_json_or_none(str(tmp_path / "absent.json"), "x") is None


def test_a_truncated_checkpoint_pointer_means_no_checkpoint_and_a_fresh_start(tmp_path, caplog):
    folder = str(tmp_path / "ckpt")
    checkpoints.save(folder, 1, {"epoch": 1})
    assert checkpoints.latest(folder).endswith("epoch-0001.pt")
    pointer = tmp_path / "ckpt" / checkpoints.LATEST
    pointer.write_bytes(pointer.read_bytes()[:7])
    with caplog.at_level(logging.WARNING):
        assert checkpoints.latest(folder) is None
    assert "the checkpoint pointer" in caplog.text and str(pointer) in caplog.text
    checkpoints.save(folder, 2, {"epoch": 2})  # the next run's save repairs it
    assert json.loads(pointer.read_bytes()) == {"epoch": 2, "file": "epoch-0002.pt"}

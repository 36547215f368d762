"""The ranker's configuration and command line: defaults, `--resume`, checks."""

from __future__ import annotations

import pytest
from recpipe.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def test_train_takes_resume_as_an_override_and_the_defaults_load(make_config):
    from recpipe.cli import build_parser

    args = build_parser()[0].parse_args(["train", "--date", "2026-11-07", "--set", "ranker.epochs=1", "--resume"])
    cfg = make_config(*args.overrides)
    assert cfg.ranker.resume is True and cfg.ranker.epochs == 1
    default = make_config()
    assert default.ranker.resume is False and default.ranker.attention_weighting == "softmax"
    assert default.table_path("ranker_input").endswith("lake/ranker_input")


@pytest.mark.parametrize("override,key", [
    ("ranker.activation=tanh", "ranker.activation"),
    ("ranker.attention_weighting=max", "ranker.attention_weighting"),
    ("ranker.batch_size=1023", "ranker.batch_size"),
    ("ranker.epochs=0", "ranker.epochs"),
    ("ranker.dropout=1.0", "ranker.dropout"),
    ("ranker.input_rows_per_file=0", "ranker.input_rows_per_file"),
])
def test_a_value_that_cannot_work_is_an_error_naming_its_key(make_config, override, key):
    from recpipe.ranker.settings import check_config

    with pytest.raises(ConfigError, match=key):
        check_config(make_config(override).ranker)


def test_the_popularity_baseline_must_be_an_item_feature_of_the_samples(make_config):
    import datetime as dt

    from recpipe.baselines import popularity_index

    meta = {"item_dense_features": ["log1p_click_7d", "log1p_click_30d", "ctr_7d"]}
    assert popularity_index(make_config().ranker, meta, dt.date(2026, 11, 7)) == 1
    with pytest.raises(ConfigError, match="ranker.popularity_feature.*log1p_click_7d, log1p_click_30d, ctr_7d"):
        popularity_index(make_config("ranker.popularity_feature=nope").ranker, meta, dt.date(2026, 11, 7))

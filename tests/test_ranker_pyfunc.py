"""The registered attention ranker is self-contained: it loads from the registry and
scores string ids in a fresh process where recpipe cannot be imported."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from recpipe.serving.model import RankerModelConfig, build_model
from recpipe.serving.scoring import CandidateScorer, save_vocabulary, save_weights

from tests.conftest import RECPIPE_NOT_LOADED, WITHOUT_RECPIPE, network_settings

pytestmark = pytest.mark.timeout(300)

L = 4
CONFIG = RankerModelConfig(**network_settings(item_embedding_dim=4, cat_embedding_dim=2, attention_hidden=(8,),
                                              head_hidden=(8,), activation="prelu"),
                           pooling="attention", item_vocab=40, cat_vocab=6, brand_vocab=4, history_length=L, user_dense_dim=2,
                           item_dense_dim=3, user_dense_mean=(1.0, 2.0), user_dense_std=(2.0, 2.0))
# Items i1..i49 in the dictionary; i40..i49 got indexes after training (>= item_vocab).
ITEM_IDS = np.array([f"i{k}" for k in range(1, 50)])
ITEM_IDX = np.arange(1, 50)
CAT_IDX = ITEM_IDX % 5 + 1
BRAND_IDX = ITEM_IDX % 3 + 1
CANDIDATES = pd.DataFrame({
    "item_id": ["i3", "never-seen-item", "i7", "i45", "i2"],
    "history": [["i1", "i2", "i5"], ["i9"], [], ["i1", "unknown", "i2", "i3", "i4", "i6"], None],
    "user_id": ["u1", "u2", "u3", "u1", "u9"],
    "als_score": [0.3, None, -0.2, 0.1, 0.0],
    "user_dense": [[1.0, 2.0], [0.5, -3.0], None, [1.0, 2.0], [0.0, 0.0]],
})


@pytest.fixture
def scorer_files(tmp_path):
    torch.manual_seed(0)
    model = build_model(CONFIG)
    dense = np.random.default_rng(0).normal(size=(len(ITEM_IDS), 3)).astype(np.float32)
    dense[5] = np.nan  # an item without features
    save_weights(str(tmp_path / "weights.pt"), CONFIG.to_dict(), model.state_dict())
    save_vocabulary(str(tmp_path / "vocabulary.npz"), ITEM_IDS, ITEM_IDX, CAT_IDX, dense, brand_idx=BRAND_IDX)
    return tmp_path / "weights.pt", tmp_path / "vocabulary.npz"


def test_histories_are_mapped_left_padded_truncated_and_unknown_ids_dropped(scorer_files):
    scorer = CandidateScorer.from_files(str(scorer_files[0]), str(scorer_files[1]))
    (item_idx, cat_idx, brand_idx, hist_items, hist_cats, hist_brands, hist_len, user_dense, item_dense, als,
     position) = scorer.inputs(CANDIDATES)
    assert item_idx.tolist() == [3, 0, 7, 0, 2]  # not in the dictionary, or beyond the trained vocabulary: 0
    assert cat_idx.tolist() == [4, 0, 3, 1, 3]  # an item newer than the model keeps its category...
    assert brand_idx.tolist() == [1, 0, 2, 1, 3]  # ...and its brand, from the packaged vocabulary
    assert hist_items.tolist() == [[0, 1, 2, 5], [0, 0, 0, 9], [0, 0, 0, 0], [2, 3, 4, 6], [0, 0, 0, 0]]
    assert hist_cats.tolist() == [[0, 2, 3, 1], [0, 0, 0, 5], [0, 0, 0, 0], [3, 4, 5, 2], [0, 0, 0, 0]]
    assert hist_brands.tolist() == [[0, 2, 3, 3], [0, 0, 0, 1], [0, 0, 0, 0], [3, 1, 2, 1], [0, 0, 0, 0]]
    assert position.tolist() == [-1] * 5  # the consumer sends no position: every row at the unknown one
    assert hist_len.tolist() == [3, 1, 0, 4, 0]
    assert user_dense[0].tolist() == [1.0, 2.0]
    assert torch.isnan(user_dense[2]).all()  # absent: the model treats NaN as the training mean
    assert torch.isnan(item_dense[1]).all() and not torch.isnan(item_dense[0]).any()
    assert als.tolist() == pytest.approx([0.3, 0.0, -0.2, 0.1, 0.0])
    scores = scorer.score(CANDIDATES)
    assert scores.shape == (5,) and np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()


def test_registered_version_loads_and_scores_where_recpipe_cannot_be_imported(scorer_files, tmp_path):
    import mlflow
    from recpipe.ranker.publish import log_ranker_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("ranker-test", artifact_location=f"file://{tmp_path}/artifacts")
        with mlflow.start_run(experiment_id=experiment):
            logged = log_ranker_model(str(scorer_files[0]), str(scorer_files[1]), CANDIDATES.head(2),
                                      registered_name="attention-ranker")
        client = mlflow.MlflowClient(uri)
        assert str(client.get_model_version_by_alias("attention-ranker", "challenger").version) == logged["version"]
    finally:
        mlflow.set_tracking_uri(previous)
    # The signature requires a list for every history (empty when the user has none).
    candidates = CANDIDATES.assign(history=[h if h is not None else [] for h in CANDIDATES["history"]],
                                   user_dense=[d if d is not None else [] for d in CANDIDATES["user_dense"]])
    expected = CandidateScorer.from_files(str(scorer_files[0]), str(scorer_files[1])).score(candidates)

    script = WITHOUT_RECPIPE + textwrap.dedent(f"""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model("models:/attention-ranker/{logged['version']}")
        frame = pd.read_json(sys.stdin.read(), orient="records")
        scores = model.predict(frame)
        bare = model.predict(frame[["item_id", "history"]])  # what a consumer may send: ids only
    """) + RECPIPE_NOT_LOADED + textwrap.dedent("""
        print(json.dumps({"scores": scores.tolist(), "name": scores.name, "bare": bare.tolist()}))
    """)
    done = subprocess.run([sys.executable, "-c", script], input=candidates.to_json(orient="records"),
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["name"] == "score"
    assert out["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
    # Ids alone score too: brand and category come from the packaged vocabulary, and an
    # item the network never saw (i45, newer than the model) still scores, by its brand and
    # category, differently from an id the vocabulary does not know.
    bare = CandidateScorer.from_files(str(scorer_files[0]), str(scorer_files[1])).score(candidates[["item_id", "history"]])
    assert out["bare"] == pytest.approx(bare.tolist(), abs=1e-6)
    assert all(0.0 < p < 1.0 for p in out["bare"])
    newer = pd.DataFrame({"item_id": ["i45", "never-seen-item"], "history": [["i1"], ["i1"]]})
    assert len(set(CandidateScorer.from_files(str(scorer_files[0]), str(scorer_files[1])).score(newer))) == 2


def test_the_model_code_ships_without_the_training_modules(tmp_path):
    from recpipe.ranker.publish import requirements, stage_model_code

    package = stage_model_code(tmp_path)
    shipped = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py"))
    assert shipped == ["__init__.py", "columns.py", "layers/__init__.py", "layers/attention.py", "layers/mlp.py",
                       "model.py", "pyfunc.py", "scoring.py"]
    imported = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module)
    assert {name.split(".")[0] for name in imported} <= {"__future__", "json", "math", "typing", "dataclasses", "numpy",
                                                         "pandas", "torch", "mlflow"}
    assert {r.split("==")[0] for r in requirements()} == {"torch", "numpy", "pandas", "mlflow"}


def test_the_serving_code_is_staged_from_a_zipped_package_as_spark_submit_ships_it(tmp_path):
    import zipfile
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "lib" / "recpipe"
    archive = tmp_path / "recpipe.zip"  # what `--py-files recpipe-*.whl` puts on the driver's path
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in package.rglob("*.py"):
            zipped.write(path, path.relative_to(package.parent))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(archive)!r})
        from pathlib import Path
        from recpipe.ranker import publish
        assert publish.__file__.startswith({str(archive)!r}), publish.__file__
        staged = publish.stage_model_code(Path({str(tmp_path / 'staged')!r}))
        print(sorted(str(p.relative_to(staged)) for p in staged.rglob("*.py")))
    """)
    staged = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert staged.returncode == 0, staged.stderr[-3000:]
    serving = package / "serving"  # staged as the top-level package `ranker`
    expected = sorted(str(p.relative_to(serving)) for name in ("__init__.py", "layers", "columns.py", "model.py",
                                                                "scoring.py", "pyfunc.py")
                      for p in ([serving / name] if name.endswith(".py") else (serving / name).rglob("*.py")))
    assert ast.literal_eval(staged.stdout.strip().splitlines()[-1]) == expected
    for relative in expected:
        assert (tmp_path / "staged" / "ranker" / relative).read_bytes() == (serving / relative).read_bytes()


def test_the_index_level_scorer_gives_the_consumer_scores_for_the_same_rows(scorer_files):
    """What `recpipe score` hands the network (an Arrow batch of users, each with its ALS
    candidates, its history as 0-padded lake indexes as in `sequences`, its features)
    scores exactly as the same rows sent by string ids through the pyfunc's path."""
    import pyarrow as pa
    from recpipe.registry.score import network_arrays, top_per_user

    scorer = CandidateScorer.from_files(str(scorer_files[0]), str(scorer_files[1]))
    lake_idx = {item: int(idx) for item, idx in zip(ITEM_IDS, ITEM_IDX)}
    never_seen, width = 999, 6  # an index no dictionary the model knows; the sequences' length
    users = {  # user: (history of item ids, user_dense, candidates as (item id, als_score))
        "u1": (["i1", "unknown", "i2", "i3", "i4", "i6"], [1.0, 2.0], [("i3", 0.3), ("i45", 0.1), ("i9", None)]),
        "u2": (["i9"], [0.5, -3.0], [("never-seen-item", None)]),
        "u3": ([], None, [("i7", -0.2), ("i2", 0.0)]),
        "u9": (None, [0.0], [("i2", 0.0)]),  # no sequence; features of a wrong length: unknown
    }
    item_dense = np.full((50, 3), np.nan, np.float32)
    item_dense[[3, 7, 9]] = [[0.5, 0.5, 0.5], [0.1, 0.2, 0.3], [1.0, -1.0, 0.0]]

    def padded(history):
        known = [lake_idx.get(item, never_seen) for item in history]
        return [0] * (width - len(known)) + known

    batch = pa.RecordBatch.from_pydict({
        "user_idx": pa.array(range(1, len(users) + 1), pa.int32()),
        "candidates": pa.array([[{"item_idx": lake_idx.get(i, never_seen), "als_score": a} for i, a in c]
                                for _, _, c in users.values()],
                               pa.list_(pa.struct([("item_idx", pa.int32()), ("als_score", pa.float32())]))),
        "hist_items": pa.array([None if h is None else padded(h) for h, _, _ in users.values()],
                               pa.list_(pa.int32())),
        "user_dense": pa.array([d for _, d, _ in users.values()], pa.list_(pa.float32())),
    })
    arrays = network_arrays(batch, CONFIG.user_dense_dim, item_dense, CONFIG.item_dense_dim)
    by_index = scorer.score_indexes(**arrays)

    consumer = pd.DataFrame([
        {"item_id": item, "history": history or [], "user_id": user, "user_dense": dense, "als_score": als,
         "item_dense": [float(x) for x in item_dense[lake_idx[item]]] if item in lake_idx else None}
        for user, (history, dense, candidates) in users.items() for item, als in candidates])
    by_id = scorer.score(consumer)
    assert np.isfinite(by_id).all() and len(set(np.round(by_id, 6))) > 4  # rows that differ
    assert by_index == pytest.approx(by_id, abs=1e-6)
    scorer.batch_size = 2  # batches that split a user's candidates (u1's three) and span users
    assert scorer.score_indexes(**arrays) == pytest.approx(by_id, abs=1e-6)

    kept_users, kept, ranks = top_per_user(np.arange(1, 5), arrays["repeat"], arrays["item_idx"], by_index, 2)
    assert kept_users.tolist() == [1, 1, 2, 3, 3, 4] and ranks.tolist() == [1, 2, 1, 1, 2, 1]
    first = by_index[:3]
    assert by_index[kept[:2]].tolist() == sorted(first, reverse=True)[:2]


def test_top_per_user_breaks_ties_by_item_index():
    from recpipe.registry.score import top_per_user

    users, kept, ranks = top_per_user(np.array([7, 8]), np.array([3, 2]), np.array([5, 2, 9, 4, 1]),
                                      np.array([0.5, 0.5, 0.9, 0.1, 0.1]), 2)
    assert users.tolist() == [7, 7, 8, 8] and kept.tolist() == [2, 1, 4, 3] and ranks.tolist() == [1, 2, 1, 2]

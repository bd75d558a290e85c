"""CTR samples: Parquet -> in-memory arrays -> padded (B, L) batches; vocabularies; bad rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mmrank.ctr.data import OOV, FeatureSpace, Vocab, concat_ranges, load_samples, make_batch, pad_rows
from mmrank.testing.ctr import synthetic_samples
from mmrank.data.io import write_table
from mmrank.data.schemas import CTR_SAMPLES
from mmrank.errors import DataError


def _table(rows: list[dict]) -> pa.Table:
    cols = {f.name: [r[f.name] for r in rows] for f in CTR_SAMPLES}
    return pa.table(cols, schema=CTR_SAMPLES)


def _row(i: int, hist: list[int], split: str = "train", label: int = 0) -> dict:
    return {"ts": 100 + i, "user_id": 7 + i % 2, "item_id": 50 + i, "request_id": i, "position": i % 3,
            "region": 0, "category_id": i % 4, "label": label, "hist_item_ids": hist,
            "hist_category_ids": [h % 4 for h in hist], "hist_ts": [1] * len(hist), "split": split}


def test_load_and_pad_by_hand(tmp_path):
    path = write_table(_table([_row(0, []), _row(1, [50]), _row(2, [50, 51, 52, 53], label=1),
                               _row(3, [99, 51], split="test")]), tmp_path / "s.parquet")
    data = load_samples(path, history_len=3)
    assert len(data) == 4
    assert data.hist_lengths().tolist() == [0, 1, 3, 2]          # row 2 truncated to the last 3
    assert data.hist_item_id.tolist() == [50, 51, 52, 53, 99, 51]
    assert data.is_train.tolist() == [True, True, True, False]
    space = FeatureSpace.fit(data, vec_item_ids=np.array([50, 51, 52, 53, 99]), min_count=1)
    assert FeatureSpace.fit(data, min_count=2).items.ids.tolist() == [50, 51, 52]  # 53: once in train
    enc = space.encode(data)
    b = make_batch(enc, np.array([0, 2, 3]), history_len=3)
    assert b["hist_item"].dtype.is_floating_point is False and b["hist_item"].shape == (3, 3)
    assert b["mask"].tolist() == [[False] * 3, [True] * 3, [True, True, False]]
    # item 99 only occurs in the test split: out of the ID vocabulary, but it has a representation
    assert b["hist_item"][2, 0].item() == OOV and b["hist_item_v"][2, 0].item() > OOV
    assert b["hist_item"][0].tolist() == [0, 0, 0]
    inv = dict(zip(space.items.lookup(space.items.ids).tolist(), space.items.ids.tolist()))
    assert [inv[int(i)] for i in b["hist_item"][1]] == [51, 52, 53]  # the most recent, oldest first
    assert b["label"].tolist() == [0.0, 1.0, 0.0]
    assert b["category"].tolist() == [1, 3, 4]                      # category_id + 1 (0 = padding)


def test_pad_rows_matches_python_on_random_csr():
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 9, 50)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    flat = rng.integers(2, 100, offsets[-1])
    rows = rng.permutation(50)[:20]
    got = pad_rows(offsets, flat, rows, 5)
    for r, g in zip(rows, got):
        h = flat[offsets[r]:offsets[r + 1]][-5:].tolist()
        assert g.tolist() == h + [0] * (5 - len(h))


def test_ranges_and_vocab():
    assert concat_ranges(np.array([3, 10, 0]), np.array([2, 0, 3])).tolist() == [3, 4, 0, 1, 2]
    v = Vocab.fit(np.array([30, 10, 10]), np.array([20]))
    assert len(v) == 5 and v.lookup(np.array([10, 20, 30, 5, 99])).tolist() == [2, 3, 4, OOV, OOV]
    assert Vocab(np.zeros(0, np.int64)).lookup(np.array([1])).tolist() == [OOV]


def test_bad_rows_name_file_row_and_column(tmp_path):
    rows = [_row(0, [1]), _row(1, [2, 3])]
    rows[1]["hist_category_ids"] = [1]
    path = write_table(_table(rows), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 1, column 'hist_category_ids'"):
        load_samples(path)
    rows = [_row(0, [1]), _row(1, [2], split="valid")]
    with pytest.raises(DataError, match=r"row 1, column 'split'"):
        load_samples(write_table(_table(rows), tmp_path / "bad2.parquet"))
    rows = [_row(0, [1], label=2)]
    with pytest.raises(DataError, match=r"row 0, column 'label'"):
        load_samples(write_table(_table(rows), tmp_path / "bad3.parquet"))
    t = _table([_row(0, [1])]).drop_columns(["hist_item_ids"])
    pa.parquet.write_table(t, tmp_path / "bad4.parquet")
    with pytest.raises(DataError, match="hist_item_ids"):
        load_samples(tmp_path / "bad4.parquet")


def test_synthetic_round_trip(tmp_path):
    table, vecs = synthetic_samples(n_rows=500, n_items=40, history_len=50, seed=1)
    data = load_samples(write_table(table, tmp_path / "s.parquet"))
    assert len(data) == 500 and data.hist_lengths().max() <= 50
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert 0.0 < data.label.mean() < 1.0

"""Search lists for re-ranking: loading, validation (point-in-time), vocabularies, batches, features."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmrank.data.io import write_table
from mmrank.data.schemas import LISTS
from mmrank.errors import DataError
from mmrank.rerank.data import ListSpace, candidate_index, load_lists, make_batch
from mmrank.rerank.features import load_features
from mmrank.store.tiny_encoder import TinyItemEncoder
from mmrank.testing.lists import write_tiny_lists


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_lists(tmp_path_factory.mktemp("lists"), n_requests=120, seed=3)


def _rewrite(src, dst, column: str, row: int, fn):
    t = pq.read_table(src)
    vals = t.column(column).to_pylist()
    vals[row] = fn(vals[row])
    t = t.set_column(t.schema.get_field_index(column), column, pa.array(vals, t.schema.field(column).type))
    return write_table(t.cast(LISTS), dst)


def test_lists_load_as_written(tiny):
    lists = load_lists(tiny / "data" / "lists.parquet")
    t = pq.read_table(tiny / "data" / "lists.parquet").to_pylist()
    assert len(lists) == len(t) == 120
    for r in (0, 57, 119):
        sl = lists.candidates(r)
        assert lists.item_id[sl].tolist() == t[r]["item_ids"]
        assert lists.position[sl].tolist() == t[r]["positions"]
        assert lists.purchase[sl].tolist() == t[r]["purchases"]
        h = slice(lists.hist_offsets[r], lists.hist_offsets[r + 1])
        assert lists.hist_item_id[h].tolist() == t[r]["hist_item_ids"]
        q = t[r]["query_text"] or t[r]["query_image"]
        assert lists.query[r].endswith(q)
    assert lists.is_train.sum() == sum(x["split"] == "train" for x in t)
    # shown candidates come in shown order, 'all' in the logged production order
    shown = candidate_index(lists, np.array([5]), "shown")[0]
    assert lists.position[shown].tolist() == list(range(len(shown)))
    every = candidate_index(lists, np.array([5]), "all")[0]
    assert np.all(np.diff(lists.prod_score[every]) <= 0)


def test_history_at_or_after_ts_is_refused_naming_row_and_column(tiny, tmp_path):
    src = tiny / "data" / "lists.parquet"
    rows = pq.read_table(src).to_pylist()
    r = next(i for i, x in enumerate(rows) if x["hist_ts"])
    bad = _rewrite(src, tmp_path / "bad.parquet", "hist_ts", r, lambda h: h[:-1] + [rows[r]["ts"]])
    with pytest.raises(DataError, match=rf"row {r}, column 'hist_ts'.*leakage"):
        load_lists(bad)


def test_label_on_a_candidate_not_shown_is_refused(tiny, tmp_path):
    src = tiny / "data" / "lists.parquet"
    rows = pq.read_table(src).to_pylist()
    k = rows[7]["positions"].index(-1)
    bad = _rewrite(src, tmp_path / "bad.parquet", "clicks", 7, lambda c: c[:k] + [1] + c[k + 1:])
    with pytest.raises(DataError, match=r"row 7, column 'clicks'.*not shown"):
        load_lists(bad)
    short = _rewrite(src, tmp_path / "short.parquet", "prices", 3, lambda p: p[:-1])
    with pytest.raises(DataError, match=r"row 3, column 'prices'"):
        load_lists(short)


def test_vocabularies_come_from_training_requests_only(tiny):
    lists = load_lists(tiny / "data" / "lists.parquet")
    space = ListSpace.fit(lists)
    tr, te = lists.train_rows(), lists.test_rows()
    train_items = set()
    for r in tr:
        sl = lists.candidates(r)
        train_items |= set(lists.item_id[sl][lists.position[sl] >= 0].tolist())
        train_items |= set(lists.hist_item_id[lists.hist_offsets[r]:lists.hist_offsets[r + 1]].tolist())
    test_only = [i for r in te for i in lists.item_id[lists.candidates(r)].tolist() if i not in train_items]
    assert set(space.items.ids.tolist()) == train_items
    if test_only:
        assert (space.items.lookup(np.array(test_only)) == 1).all()   # OOV


def test_batch_pads_lists_and_relative_features_are_per_list(tiny):
    lists = load_lists(tiny / "data" / "lists.parquet")
    space = ListSpace.fit(lists)
    rows = np.array([0, 1, 2])
    b = make_batch(lists, space, rows, "all")
    n = np.diff(lists.offsets)[rows]
    assert b["item"].shape == (3, n.max()) and (~b["pad"]).sum(1).tolist() == n.tolist()
    rel = b["num"][..., 1]                                  # log price relative to the list's mean
    torch.testing.assert_close((rel * ~b["pad"]).sum(1), torch.zeros(3, dtype=rel.dtype), atol=1e-5, rtol=0)
    s = make_batch(lists, space, rows, "shown")
    # a candidate's features do not depend on which of the request's candidates are batched with it
    for k, r in enumerate(rows):
        every = candidate_index(lists, np.array([r]), "all")[0]
        shown = candidate_index(lists, np.array([r]), "shown")[0]
        at = [int(np.flatnonzero(every == i)[0]) for i in shown]
        torch.testing.assert_close(s["num"][k, :len(shown)], b["num"][k, at])
    for k, r in enumerate(rows):
        idx = candidate_index(lists, np.array([r]), "shown")[0]
        assert s["purchase"][k, :len(idx)].tolist() == lists.purchase[idx].astype(float).tolist()
    assert s["hist_mask"].sum(1).tolist() == np.diff(lists.hist_offsets)[rows].tolist()


class _Counting(TinyItemEncoder):
    calls = 0

    def encode_text(self, texts):
        _Counting.calls += 1
        return super().encode_text(texts)


def test_features_are_the_encoders_and_cached(tiny):
    lists = load_lists(tiny / "data" / "lists.parquet")
    enc = _Counting(dim=8)
    f = load_features(tiny, lists, enc)
    items = pq.read_table(tiny / "data" / "items.parquet")
    ids = items.column("item_id").to_numpy()
    order = np.argsort(ids)
    np.testing.assert_allclose(f.tables["text"][2:].numpy(), enc.encode_text(items.column("title").to_pylist())[order],
                               atol=1e-6)
    np.testing.assert_allclose(f.tables["image"][2:].numpy(), enc.encode_images(items.column("image").to_pylist())[order],
                               atol=1e-6)
    r = next(i for i, q in enumerate(lists.query) if q.startswith("text:"))
    np.testing.assert_allclose(f.queries[r].numpy(), enc.encode_text([lists.query[r][5:]])[0], atol=1e-6)
    qi = pq.read_table(tiny / "data" / "query_images.parquet").to_pylist()
    r = next(i for i, q in enumerate(lists.query) if q.startswith("image:"))
    photo = next(x["image"] for x in qi if x["query_image"] == lists.query[r][6:])
    np.testing.assert_allclose(f.queries[r].numpy(), enc.encode_images([photo])[0], atol=1e-6)
    _Counting.calls = 0
    again = load_features(tiny, lists, enc)
    assert _Counting.calls == 0                              # served from R/rerank/features/<version>/
    assert torch.equal(again.queries, f.queries)


def test_ranges_with_empty_runs_first_and_between():
    """``concat_ranges`` (CSR gathers of histories, shared with mmrank.ctr.data) when a run is empty, the first
    one included: a history-less first row used to shift every index of the batch."""
    from mmrank.ctr.data import concat_ranges

    starts, lengths = np.array([5, 10, 0, 20, 7]), np.array([0, 2, 0, 3, 1])
    expect = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    np.testing.assert_array_equal(concat_ranges(starts, lengths), expect)
    np.testing.assert_array_equal(concat_ranges(np.array([3]), np.array([0])), np.zeros(0))

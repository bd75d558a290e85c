"""The online joiner: its rows equal the batch CTR samples on a market; windows, late events,
duplicates and bad input on hand-built streams."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrank.data.samples import build_ctr_samples
from mmrank.stream.events import BadRecord, Event
from mmrank.stream.joiner import SAMPLE_SCHEMA, Joiner
from mmrank.stream.sources import ReplaySource
from mmrank.stream.stage import make_joiner


def _join(run: Path, batch_events: int) -> pa.Table:
    j = make_joiner(run)
    out = [j.push(b.records) for b in ReplaySource(run, batch_events=batch_events)] + [j.flush()]
    assert j.stats()["bad_total"] == 0 and j.stats()["in_flight"] == 0
    return pa.Table.from_batches(out, schema=SAMPLE_SCHEMA)


@pytest.mark.parametrize("batch_events", [97, 4096])
def test_joiner_equals_batch_samples(tiny_market: Path, batch_events: int) -> None:
    """The key test: the stream's samples are the batch samples, row for row (labels, histories,
    categories, split), in the same order, whatever the batch size."""
    data = tiny_market / "data"
    m = json.loads((data / "manifest.json").read_text())
    events = pq.read_table(data / "events.parquet")
    items = pq.read_table(data / "items.parquet", columns=["item_id", "category", "price"])
    ref = build_ctr_samples(events, items, m["split_ts"], m["history_len"], m["start_ts"])
    got = _join(tiny_market, batch_events)
    assert got.num_rows == ref.num_rows > 1000
    assert got.drop_columns(["event_id"]).cast(ref.schema).equals(ref)
    stored = pq.read_table(data / "ctr_samples.parquet")
    assert got.drop_columns(["event_id"]).cast(stored.schema).equals(stored)
    assert 0 < pc_sum(got.column("label")) < got.num_rows
    # event_id is the impression's row in events.parquet.
    rows = events.take(got.column("event_id"))
    assert rows.column("event").to_pylist() == ["impression"] * got.num_rows
    for c in ("ts", "request_id", "position", "item_id", "user_id"):
        assert rows.column(c).equals(got.column(c).cast(rows.schema.field(c).type))


def pc_sum(col: pa.ChunkedArray) -> int:
    return sum(col.to_pylist())


ITEMS = pa.table({"item_id": [1, 2, 3], "category": ["shoe", "bag", "shoe"]})
W = 100  # window; lateness = window


def _imp(eid: int, ts: int, req: int, pos: int = 0, item: int = 1, user: int = 7, surface: str = "display") -> Event:
    return Event(eid, ts, "impression", user, item, req, pos, 0, surface)


def _ev(eid: int, ts: int, typ: str, req: int, pos: int = 0, item: int = 1, user: int = 7) -> Event:
    return Event(eid, ts, typ, user, item, req, pos, 0, "display")


def _joiner(**kw) -> Joiner:
    return Joiner(ITEMS, split_ts=1000, history_len=kw.pop("history_len", 3), window_s=W, **kw)


def _rows(j: Joiner, *pushes) -> list[dict]:
    out = []
    for p in pushes:
        out += j.push(p).to_pylist()
    return out + j.flush().to_pylist()


def test_labels_inside_the_window_only_and_emitted_after_it() -> None:
    j = _joiner()
    first = j.push([_imp(1, 10, req=1), _imp(2, 10, req=2), _ev(3, 10 + W, "click", req=1),
                    _ev(4, 10 + W + 1, "click", req=2)])
    assert first.num_rows == 0  # windows still open
    assert j.push([_ev(5, 10 + 2 * W, "cart", req=9, item=2)]).num_rows == 0  # ts + w + l not passed
    rows = j.push([_ev(6, 10 + 2 * W + 1, "cart", req=9, item=2)]).to_pylist()
    assert [(r["request_id"], r["label"]) for r in rows] == [(1, 1), (2, 0)]
    assert j.stats()["labels_outside_window"] == 1
    assert rows[0]["split"] == "train" and rows[0]["event_id"] == 1


def test_out_of_order_label_before_its_impression_counts() -> None:
    j = _joiner()
    rows = _rows(j, [_ev(2, 50, "click", req=1), _imp(1, 40, req=1)])
    assert [(r["event_id"], r["label"]) for r in rows] == [(1, 1)]


def test_history_is_point_in_time_last_l_clicks() -> None:
    j = _joiner(history_len=2)
    clicks = [_ev(10 + i, 10 * i, "click", req=100 + i, item=1 + i % 3) for i in range(1, 5)]  # ts 10..40
    rows = _rows(j, clicks + [_imp(1, 30, req=200, item=3), _ev(2, 30, "click", req=200, item=3)])
    r = rows[0]
    assert r["label"] == 1
    assert r["hist_ts"] == [10, 20]  # strictly before 30: the click at 30 (its own request) is not in it
    assert r["hist_item_ids"] == [2, 3] and r["hist_category_ids"] == [0, 1]  # bag=0, shoe=1


def test_duplicates_dropped_by_event_id() -> None:
    evs = [_imp(1, 10, req=1), _ev(2, 11, "click", req=1), _imp(3, 12, req=2)]
    once = _rows(_joiner(), evs)
    j = _joiner()
    twice = _rows(j, evs, evs[::-1], [evs[1]])
    assert twice == once and len(once) == 2
    assert j.stats()["duplicates"] == 4


def test_bad_input_counted_logged_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    j = _joiner()
    good = [_imp(1, 500, req=1), _ev(2, 500, "click", req=1)]
    bad = [
        {"id": "20", "ts": "x", "type": "click", "item": "1", "user": "1", "req": "1", "pos": "0", "region": "0"},
        {"id": "21", "ts": "5", "type": "view", "item": "1"},
        {"ts": "5", "type": "click"},
        BadRecord("entry 9-0", "malformed: not utf-8"),
        _imp(22, 501, req=3, item=999),                     # unknown item
        _ev(23, 500 - W - 1, "click", req=1),                # late: beyond the window before the watermark
        Event(24, 502, "item_arrival", item_id=50, category="hat"),  # unknown category
    ]
    with caplog.at_level(logging.WARNING, logger="mmrank.stream"):
        rows = _rows(j, good, bad, [_imp(25, 503, req=4)])
    assert [(r["event_id"], r["label"]) for r in rows] == [(1, 1), (25, 0)]
    s = j.stats()
    assert s["bad"] == {"malformed": 4, "unknown_item": 1, "late": 1, "unknown_category": 1}
    assert s["bad_total"] == 7
    text = caplog.text
    for eid in ("20", "21", "?", "entry 9-0", "22", "23", "24"):
        assert f"bad event {eid}:" in text
    assert "late" in text and "item 999 is not in the catalog" in text


def test_arrival_of_an_item_outside_the_catalog_makes_it_known() -> None:
    j = _joiner()
    rows = _rows(j, [Event(1, 5, "item_arrival", item_id=40, category="bag"), _imp(2, 6, req=1, item=40)])
    assert [(r["item_id"], r["category_id"]) for r in rows] == [(40, 0)]
    assert j.stats()["arrivals"] == 1 and j.stats()["bad_total"] == 0


def test_search_impressions_and_burn_in_are_not_samples() -> None:
    j = _joiner(start_ts=100)
    rows = _rows(j, [_imp(1, 50, req=1), _imp(2, 150, req=2, surface="search"), _imp(3, 160, req=3)])
    assert [r["event_id"] for r in rows] == [3]


def test_snapshot_restore_resumes_exactly(tiny_market: Path) -> None:
    whole = _join(tiny_market, 2048)
    src = ReplaySource(tiny_market, batch_events=2048)
    j = make_joiner(tiny_market)
    out = []
    for _ in range(5):
        batch = src.read()
        out.append(j.push(batch.records))
        src.ack(batch.cursor)
    state, cursor = j.snapshot(), src.cursor()  # a checkpoint: the joiner's state and the cursor
    assert cursor["offset"] == 5 * 2048
    j2 = Joiner.restore(state)
    src2 = ReplaySource(tiny_market, cursor=json.loads(json.dumps(cursor)), batch_events=2048)
    out += [j2.push(b.records) for b in src2] + [j2.flush()]
    assert pa.Table.from_batches(out, schema=SAMPLE_SCHEMA).equals(whole)


def test_a_snapshot_that_names_code_is_refused() -> None:
    """Restoring reads plain data only: a pickle that would call a function (here ``os.system``) is
    refused before anything runs."""
    import os
    import pickle

    from mmrank.stream.joiner import Joiner

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="not plain data"):
        Joiner.restore(pickle.dumps({"x": Evil()}))

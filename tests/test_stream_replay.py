"""The replay source: a run's events and item arrivals in timestamp order, batches, cursors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrank.errors import MMRankError
from mmrank.stream.events import ARRIVAL_ID_BASE, Event, parse_event
from mmrank.stream.sources import ReplaySource, open_source


def _all(src: ReplaySource) -> list[Event]:
    return [e for b in src for e in b.records]


def test_replay_order_ids_and_arrivals(tiny_market: Path) -> None:
    data = tiny_market / "data"
    events = pq.read_table(data / "events.parquet")
    items = pq.read_table(data / "items.parquet", columns=["item_id", "category", "created_at"])
    got = _all(ReplaySource(tiny_market, batch_events=1000))
    assert all(isinstance(e, Event) for e in got)
    ts = np.array([e.ts for e in got])
    assert (np.diff(ts) >= 0).all()
    ids = [e.event_id for e in got]
    assert len(set(ids)) == len(ids) == events.num_rows + sum(1 for e in got if e.type == "item_arrival")
    # Behaviour events: id = row, fields = the row's.
    beh = [e for e in got if e.type != "item_arrival"]
    assert sorted(e.event_id for e in beh) == list(range(events.num_rows))
    for e in beh[:: max(1, len(beh) // 200)]:
        row = events.slice(e.event_id, 1).to_pylist()[0]
        assert (e.ts, e.type, e.user_id, e.item_id, e.request_id, e.position, e.region, e.surface) == \
            (row["ts"], row["event"], row["user_id"], row["item_id"], row["request_id"], row["position"],
             row["region"], row["surface"])
    # Arrivals: one per item created after the log's first event, at created_at, before events at that ts.
    created = dict(zip(items.column("item_id").to_pylist(), items.column("created_at").to_pylist()))
    arr = [e for e in got if e.type == "item_arrival"]
    first = events.column("ts").to_numpy().min()
    assert {e.item_id for e in arr} == {i for i, c in created.items() if c > first} and arr
    assert all(e.ts == created[e.item_id] and e.event_id >= ARRIVAL_ID_BASE and e.category for e in arr)
    pos = {e.event_id: i for i, e in enumerate(got)}
    for e in arr:
        assert all(x.ts >= e.ts for x in got[pos[e.event_id]:])
    # Every impression of an arriving item comes after its arrival.
    seen: set[int] = set()
    arriving = {a.item_id for a in arr}
    for e in got:
        if e.type == "item_arrival":
            seen.add(e.item_id)
        elif e.item_id in arriving:
            assert e.item_id in seen
    assert len(_all(ReplaySource(tiny_market, arrivals=False))) == events.num_rows


def test_replay_cursor_resumes_after_the_last_ack(tiny_market: Path) -> None:
    whole = [e.event_id for e in _all(ReplaySource(tiny_market, batch_events=500))]
    src = ReplaySource(tiny_market, batch_events=500)
    done = []
    for _ in range(3):
        b = src.read()
        done += [e.event_id for e in b.records]
        src.ack(b.cursor)
    src.read()  # read but never acknowledged: a crash here loses nothing
    assert src.lag() == len(whole) - 2000
    cursor = json.loads(json.dumps(src.cursor()))
    assert cursor == {"source": "replay", "run": str(tiny_market), "offset": 1500}
    rest = [e.event_id for e in _all(open_source(tiny_market, "replay", cursor=cursor))]
    assert done + rest == whole


def test_wire_form_round_trip_and_bad_sources(tiny_market: Path) -> None:
    for e in _all(ReplaySource(tiny_market, batch_events=4096))[:50] + [Event(9, 3, "item_arrival", item_id=4, category="x")]:
        assert parse_event({k.encode(): v.encode() for k, v in e.to_fields().items()}) == e
    with pytest.raises(MMRankError, match="expected replay or redis"):
        open_source(tiny_market, "kafka")
    with pytest.raises(MMRankError, match="not a replay cursor"):
        ReplaySource(tiny_market, cursor={"source": "redis", "last_id": "1-0"})
    with pytest.raises(MMRankError, match="give --redis"):
        open_source(tiny_market, "redis")
    with pytest.raises(MMRankError, match="not found"):
        ReplaySource(tiny_market / "nope")


def test_throughput_benchmark_runs_small(tiny_market: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "stream_throughput.py"
    monkeypatch.setattr(sys, "argv", ["stream_throughput.py", "--run", str(tiny_market), "--repeats", "1"])
    runpy.run_path(str(script), run_name="__main__")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["measure"] for x in lines] == ["replay", "replay+joiner"]
    assert all(x["events"] > 30_000 and x["events_per_s_median"] > 0 for x in lines)

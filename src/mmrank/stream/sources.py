"""Event sources: one interface, two backends.

A source hands out :class:`EventBatch` es in stream order from where it was opened; each batch carries
the cursor *after* it. The consumer calls :meth:`Source.ack` with that cursor once the batch is done
(trained, or written), and saves :meth:`Source.cursor` (JSON) in its checkpoint; reopening the source
with that cursor resumes after the last acknowledged batch.

* :class:`ReplaySource` (the embedded default): a run's ``R/data/events.parquet`` plus an
  ``item_arrival`` event at ``created_at`` for every item created after the log's first event, in
  timestamp order (arrivals first at equal times, then the table's row order), via PyArrow; no server.
  The cursor is an offset in that order.
* :class:`RedisSource`: a Redis stream read by a consumer group (``XREADGROUP``); ``ack`` is ``XACK``.
  A consumer that crashed leaves its unacknowledged entries pending in the group; reopened under the
  same name it reads them again first. Entries at or below the checkpoint cursor's ``last_id`` were
  done before the crash: they are acknowledged and skipped, so no entry is done twice.
  :func:`produce` puts a run's events on a stream (``XADD``), in the replay order.

No Kafka backend: confluent-kafka is not installed here and no broker runs in the tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import pyarrow.parquet as pq

from mmrank.errors import MMRankError
from mmrank.stream.config import StreamConfig
from mmrank.stream.events import ARRIVAL_ID_BASE, EVENT_TYPES, BadRecord, Event, MalformedEvent, parse_event

_SURFACES = ("display", "search", "")  # "" = a null surface in a log that has the column


@dataclass
class EventBatch:
    """Records in stream order (an :class:`Event`, or a :class:`BadRecord` the source could not parse),
    and the cursor after them (ack it once they are done)."""

    records: list[Event | BadRecord]
    cursor: dict[str, Any]

    def __len__(self) -> int:
        return len(self.records)


class Source(Protocol):
    """What every backend offers."""

    def read(self, max_events: int | None = None) -> EventBatch | None:
        """The next batch (at most ``max_events``); None when nothing is there (replay: the end)."""

    def ack(self, cursor: dict[str, Any]) -> None:
        """Everything up to ``cursor`` (a batch's) is done."""

    def cursor(self) -> dict[str, Any]:
        """The acknowledged position, JSON-serialisable: what a checkpoint saves."""

    def lag(self) -> int | None:
        """Events not yet handed out (None when unknown)."""

    def close(self) -> None: ...


def run_stream_key(run: str | Path) -> str:
    return f"mmrank:events:{Path(run).resolve().name}"


class ReplaySource:
    """A run's events and item arrivals in timestamp order (see the module docstring).

    Args:
        run: run directory (reads ``R/data/events.parquet`` and ``R/data/items.parquet``).
        cursor: a cursor from :meth:`cursor` (None: from the start).
        batch_events: default batch size; arrivals: emit item arrivals.
    """

    def __init__(self, run: str | Path, cursor: dict[str, Any] | None = None, batch_events: int = 4096,
                 arrivals: bool = True) -> None:
        from mmrank.data.io import read_table

        self.run = Path(run)
        data = self.run / "data"
        epath, ipath = data / "events.parquet", data / "items.parquet"
        for p in (epath, ipath):
            if not p.exists():
                raise MMRankError(f"{p}: not found (generate or import the run's data first)")
        names = pq.read_schema(epath).names
        cols = ["ts", "user_id", "item_id", "request_id", "position", "event", "region"]
        has_surface = "surface" in names
        ev = read_table(epath, "events", columns=cols + (["surface"] if has_surface else []))
        items = read_table(ipath, "items", columns=["item_id", "category", "created_at"])
        n = ev.num_rows
        ts = ev.column("ts").to_numpy()
        etype = np.asarray(ev.column("event").to_pylist(), dtype=object)
        type_code = np.full(n, -1, np.int8)
        for i, name in enumerate(EVENT_TYPES):
            type_code[etype == name] = i
        if has_surface:
            surf = np.asarray(ev.column("surface").to_pylist(), dtype=object)
            surf_code = np.full(n, 2, np.int8)
            surf_code[surf == "display"] = 0
            surf_code[surf == "search"] = 1
        else:
            surf_code = np.full(n, -1, np.int8)
        created = items.column("created_at").to_numpy()
        first = int(ts.min()) if n else 0
        arr = np.flatnonzero(created > first) if arrivals else np.zeros(0, np.int64)
        cats = np.asarray(items.column("category").to_pylist(), dtype=object)
        m = len(arr)
        all_ts = np.concatenate([created[arr], ts]).astype(np.int64)
        order = np.lexsort((np.arange(m + n), all_ts))  # by ts, arrivals first, then row order
        neg = np.full(m, -1, np.int64)

        def cat(col: str, fill: np.ndarray | None = None) -> np.ndarray:
            return np.concatenate([neg if fill is None else fill, ev.column(col).to_numpy().astype(np.int64)])

        self._cols = {
            "id": np.concatenate([ARRIVAL_ID_BASE + arr.astype(np.int64), np.arange(n, dtype=np.int64)])[order],
            "ts": all_ts[order],
            "type": np.concatenate([np.full(m, EVENT_TYPES.index("item_arrival"), np.int8), type_code])[order],
            "user": cat("user_id")[order],
            "item": cat("item_id", items.column("item_id").to_numpy()[arr].astype(np.int64))[order],
            "req": cat("request_id")[order], "pos": cat("position")[order], "region": cat("region")[order],
            "surface": np.concatenate([np.full(m, -1, np.int8), surf_code])[order],
        }
        self._cats = np.concatenate([cats[arr], np.full(n, None, dtype=object)])[order]
        self._etype = etype
        self.total = m + n
        self.n_arrivals = m
        self.batch_events = batch_events
        start = 0
        if cursor is not None:
            if cursor.get("source") != "replay" or not isinstance(cursor.get("offset"), int):
                raise MMRankError(f"replay source: not a replay cursor: {json.dumps(cursor)}")
            start = cursor["offset"]
            if not 0 <= start <= self.total:
                raise MMRankError(f"replay source: cursor offset {start} outside 0..{self.total}")
        self._next = self._acked = start

    def read(self, max_events: int | None = None) -> EventBatch | None:
        lo = self._next
        hi = min(self.total, lo + (max_events or self.batch_events))
        if lo >= hi:
            return None
        c = {k: v[lo:hi].tolist() for k, v in self._cols.items()}
        cats = self._cats[lo:hi].tolist()
        records: list[Event | BadRecord] = []
        for eid, ts, t, user, item, req, pos, region, s, category in zip(
                c["id"], c["ts"], c["type"], c["user"], c["item"], c["req"], c["pos"], c["region"],
                c["surface"], cats):
            if t < 0:
                records.append(BadRecord(str(eid), f"malformed: unknown event type {self._etype[eid]!r}"))
                continue
            records.append(Event(eid, ts, EVENT_TYPES[t], user, item, req, pos, region,
                                 None if s < 0 else _SURFACES[s], category))
        self._next = hi
        return EventBatch(records, self._cursor(hi))

    def __iter__(self) -> Iterator[EventBatch]:
        while (b := self.read()) is not None:
            yield b

    def _cursor(self, offset: int) -> dict[str, Any]:
        return {"source": "replay", "run": str(self.run), "offset": int(offset)}

    def ack(self, cursor: dict[str, Any]) -> None:
        off = int(cursor["offset"])
        if off > self._next:
            raise MMRankError(f"replay source: ack at {off} beyond what was read ({self._next})")
        self._acked = max(self._acked, off)

    def cursor(self) -> dict[str, Any]:
        return self._cursor(self._acked)

    def lag(self) -> int:
        return self.total - self._next

    def close(self) -> None:
        pass


def _sid(entry_id: str | bytes) -> tuple[int, int]:
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


class RedisSource:
    """A Redis stream read by a consumer group (see the module docstring).

    Args:
        url: ``redis://host:port/db``; stream: the stream key; group / consumer: the consumer group and
        this consumer's name (reopen with the same name to resume its pending entries);
        cursor: the checkpoint's cursor (entries at or below its ``last_id`` are acknowledged, skipped).
    """

    def __init__(self, url: str, stream: str, group: str = "mmrank", consumer: str = "joiner",
                 cursor: dict[str, Any] | None = None, batch_events: int = 4096, block_ms: int = 500) -> None:
        import redis

        self.url, self.stream, self.group, self.consumer = url, stream, group, consumer
        self.client = redis.Redis.from_url(url)
        self.batch_events, self.block_ms = batch_events, block_ms
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        except redis.exceptions.ConnectionError as err:
            raise MMRankError(f"redis source: cannot reach {url}: {err}") from None
        self._acked = None
        if cursor is not None:
            if cursor.get("source") != "redis":
                raise MMRankError(f"redis source: not a redis cursor: {json.dumps(cursor)}")
            self._acked = cursor.get("last_id")
        self._done = _sid(self._acked) if self._acked else None
        self._pending_from: str | None = "0"  # first our own pending entries, then new ones (">")
        self._delivered: list[str] = []
        self.skipped = 0  # pending entries the checkpoint had already done

    def read(self, max_events: int | None = None) -> EventBatch | None:
        n = max_events or self.batch_events
        while True:
            if self._pending_from is not None:
                resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: self._pending_from}, count=n)
                entries = resp[0][1] if resp else []
                if not entries:
                    self._pending_from = None
                    continue
                self._pending_from = entries[-1][0].decode()
                done = [e for e in entries if self._done is not None and _sid(e[0]) <= self._done]
                if done:
                    self.client.xack(self.stream, self.group, *[e[0] for e in done])
                    self.skipped += len(done)
                    entries = [e for e in entries if not (self._done is not None and _sid(e[0]) <= self._done)]
                    if not entries:
                        continue
            else:
                resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=n,
                                              block=self.block_ms)
                entries = resp[0][1] if resp else []
                if not entries:
                    return None
            records: list[Event | BadRecord] = []
            for entry_id, fields in entries:
                eid = entry_id.decode()
                self._delivered.append(eid)
                try:
                    records.append(parse_event(fields))
                except MalformedEvent as err:
                    rid = err.id if err.id != "?" else f"entry {eid}"
                    records.append(BadRecord(rid, f"malformed: {err.reason}",
                                             {k.decode(): v.decode(errors="replace") for k, v in fields.items()}))
            return EventBatch(records, self._cursor(self._delivered[-1]))

    def __iter__(self) -> Iterator[EventBatch]:
        while (b := self.read()) is not None:
            yield b

    def _cursor(self, last_id: str | None) -> dict[str, Any]:
        return {"source": "redis", "stream": self.stream, "group": self.group, "consumer": self.consumer,
                "last_id": last_id}

    def ack(self, cursor: dict[str, Any]) -> None:
        last = _sid(cursor["last_id"])
        ids = [i for i in self._delivered if _sid(i) <= last]
        if ids:
            self.client.xack(self.stream, self.group, *ids)
        self._delivered = [i for i in self._delivered if _sid(i) > last]
        self._acked = cursor["last_id"]

    def cursor(self) -> dict[str, Any]:
        return self._cursor(self._acked)

    def lag(self) -> int | None:
        """Entries not yet delivered to the group (Redis >= 7 reports it), else None."""
        try:
            for g in self.client.xinfo_groups(self.stream):
                if g.get("name") in (self.group, self.group.encode()):
                    lag = g.get("lag")
                    return None if lag is None else int(lag)
        except Exception:  # noqa: BLE001 - lag is informative only
            return None
        return None

    def pending(self) -> int:
        return int(self.client.xpending(self.stream, self.group)["pending"])

    def close(self) -> None:
        self.client.close()


def open_source(run: str | Path, kind: str = "replay", cursor: dict[str, Any] | None = None,
                cfg: StreamConfig | None = None) -> ReplaySource | RedisSource:
    """The run's event source of ``kind`` (replay | redis), resumed at ``cursor`` when given."""
    cfg = cfg or StreamConfig()
    if kind == "replay":
        return ReplaySource(run, cursor, cfg.batch_events, cfg.arrivals)
    if kind == "redis":
        if not cfg.redis_url:
            raise MMRankError("stream source redis: give --redis URL (redis://host:port/db)")
        return RedisSource(cfg.redis_url, cfg.stream or run_stream_key(run), cfg.group, cfg.consumer, cursor,
                           cfg.batch_events, cfg.block_ms)
    raise MMRankError(f"stream source: expected replay or redis, got {kind!r}")


def produce(run: str | Path, redis_url: str, stream: str | None = None, arrivals: bool = True,
            chunk: int = 2000, limit: int | None = None) -> dict[str, Any]:
    """``XADD`` a run's events (and arrivals) to ``stream`` in the replay order; returns counts.
    Producing twice puts every event twice (same ids): the joiner drops the second by id."""
    import redis

    stream = stream or run_stream_key(run)
    client = redis.Redis.from_url(redis_url)
    src = ReplaySource(run, batch_events=chunk, arrivals=arrivals)
    t0, n = time.perf_counter(), 0
    try:
        while (batch := src.read()) is not None:
            pipe = client.pipeline(transaction=False)
            for ev in batch.records:
                if isinstance(ev, Event):
                    if limit is not None and n >= limit:
                        break
                    pipe.xadd(stream, ev.to_fields())
                    n += 1
            pipe.execute()
            if limit is not None and n >= limit:
                break
    except redis.exceptions.ConnectionError as err:
        raise MMRankError(f"stream produce: cannot reach {redis_url}: {err}") from None
    secs = time.perf_counter() - t0
    return {"stream": stream, "events": n, "seconds": round(secs, 3),
            "events_per_s": round(n / secs, 1) if secs > 0 else None}

"""The online joiner: impressions joined with their clicks, carts and purchases within an attribution
window, emitted in event time as CTR samples.

A sample has the columns of :func:`mmrank.data.samples.build_ctr_samples` (``label`` = clicked) plus
``event_id`` (the impression's) and ``cart`` / ``purchase`` are counted but not emitted. On a log in
timestamp order the joiner's rows equal the batch samples' rows, in the same order
(``tests/test_stream_joiner.py``).

Event time, with W the watermark (the newest event time seen), w the window and l the allowed lateness:

* an event with ``ts < W - l`` is late: counted, logged with its id, dropped;
* a label (click, cart, purchase) counts for the impression of its slot (request, position) when
  ``0 <= label.ts - impression.ts <= w``; it may come before its impression (out of order, within l);
* an impression is emitted once ``impression.ts + w + l < W``: no label inside its window can still be
  accepted, nor any click before it, so its label and its history are final;
* the history is the user's last L clicks (any surface, burn-in included) strictly before the
  impression's ts, most recent last (ties in arrival order): the batch rule;
* a duplicate (an event id seen within the lateness horizon) is dropped and counted; a malformed
  event, an item outside the catalog, or an arrival with an unknown category is counted, logged with
  its id and dropped. Nothing in the input makes the joiner raise.
  ``labels_unjoined`` counts labels whose slot had no sample impression within the window (labels of
  search lists and of the burn-in are joined to nothing: they are not CTR samples); they still feed
  histories (clicks).

State is bounded by the horizon: per user the last L clicks older than ``W - w - l`` and all newer
ones, the impressions in flight, and the ids seen within l. :meth:`Joiner.snapshot` pickles it (plain data; :meth:`Joiner.restore` refuses anything else), for a
checkpoint beside the source cursor (restart = restore the snapshot, reopen the source at the cursor).
"""

from __future__ import annotations

import heapq
import io
import logging
import pickle
from bisect import bisect_left, insort
from collections import Counter, deque
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa

from mmrank.data.schemas import CTR_SAMPLES, HISTORY_LEN
from mmrank.stream.events import BadRecord, Event, MalformedEvent, parse_event

log = logging.getLogger("mmrank.stream")

SAMPLE_SCHEMA = CTR_SAMPLES.append(pa.field("event_id", pa.int64(), nullable=False))
LOGGED_BAD = 20  # bad events logged at WARNING; later ones at DEBUG (all counted)

# A pending impression: [event_id, ts, user, item, request, position, region, category_id, click, seq]
_ID, _TS, _USER, _ITEM, _REQ, _POS, _REGION, _CAT, _CLICK, _SEQ = range(10)


def category_vocab(items: pa.Table) -> tuple[dict[int, int], list[str]]:
    """item_id -> category id, and the vocabulary (sorted category names): the batch samples' ids."""
    ids = items.column("item_id").to_numpy()
    cats = np.asarray(items.column("category").to_pylist(), dtype=object).astype(str)
    vocab, cat_ids = np.unique(cats, return_inverse=True)
    return dict(zip(ids.tolist(), cat_ids.astype(np.int64).tolist())), vocab.tolist()


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: a global outside :data:`_PLAIN` is refused (the Python docs'
    "restricting globals" recipe), so loading a snapshot never imports or calls anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"joiner snapshot: {module}.{name} is not plain data; refused")


_PLAIN = {("builtins", n) for n in ("set", "frozenset", "list", "dict", "tuple", "int", "float", "str",
                                     "bytes", "bool")} | {("collections", "deque"), ("collections", "Counter"),
                                                         ("collections", "OrderedDict")}


class Joiner:
    """Events in, CTR samples out (see the module docstring for the rules).

    Args:
        items: the catalog (``item_id``, ``category``): known items and the category vocabulary.
        split_ts: train/test boundary (``split`` = train when ``ts < split_ts``).
        history_len: L, clicks per behaviour sequence.
        start_ts: impressions before this feed nothing but are not samples (the batch burn-in).
        window_s: attribution window w; lateness_s: allowed lateness l (None: w).

    Example::

        >>> j = Joiner(items, split_ts=m["split_ts"], start_ts=m["start_ts"])
        >>> for batch in source: out = j.push(batch.events)   # pa.RecordBatch, maybe 0 rows
        >>> last = j.flush()                                   # end of stream: emit everything
    """

    def __init__(self, items: pa.Table, *, split_ts: int, history_len: int = HISTORY_LEN, start_ts: int = 0,
                 window_s: int = 1800, lateness_s: int | None = None) -> None:
        self.cat_of, self.vocab = category_vocab(items)
        self.cat_index = {c: i for i, c in enumerate(self.vocab)}
        self.split_ts, self.history_len, self.start_ts = int(split_ts), int(history_len), int(start_ts)
        self.window = int(window_s)
        self.lateness = self.window if lateness_s is None else int(lateness_s)
        self.watermark: int | None = None
        self.seq = 0
        self.pending: dict[tuple[int, int], list[list]] = {}
        self.heap: list[tuple[int, int, list]] = []
        self.early: dict[tuple[int, int], list[tuple[str, int]]] = {}
        self.early_heap: list[tuple[int, int, tuple[int, int]]] = []
        self.hist: dict[int, list[tuple[int, int, int]]] = {}
        self.seen: set[int] = set()
        self.seen_fifo: deque[tuple[int, int]] = deque()
        self.arrivals: dict[int, int] = {}
        self.counts: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.bad_examples: list[tuple[str, str]] = []
        self._reset_out()

    # -- input ----------------------------------------------------------------------------------------
    def push(self, events: Iterable[Event | Mapping[str, Any] | BadRecord]) -> pa.RecordBatch:
        """Take events (``Event``, wire dicts, or ``BadRecord`` a source could not parse); return the
        samples whose windows closed (in event time order, maybe 0 rows)."""
        window, lateness, start_ts = self.window, self.lateness, self.start_ts
        cat_of, seen, counts = self.cat_of, self.seen, self.counts
        for ev in events:
            if not isinstance(ev, Event):
                if isinstance(ev, BadRecord):
                    self._bad(ev.id, ev.reason)
                    continue
                try:
                    ev = parse_event(ev)
                except MalformedEvent as err:
                    self._bad(err.id, f"malformed: {err.reason}")
                    continue
            eid, ts, typ = ev.event_id, ev.ts, ev.type
            if eid in seen:
                counts["duplicates"] += 1
                continue
            wm = self.watermark
            if wm is not None and ts < wm - lateness:
                self._bad(str(eid), f"late: ts {ts} is more than {lateness} s before the watermark {wm}")
                continue
            if typ == "item_arrival":
                if not self._arrive(ev):
                    continue
            else:
                cat = cat_of.get(ev.item_id)
                if cat is None:
                    self._bad(str(eid), f"unknown_item: item {ev.item_id} is not in the catalog")
                    continue
                self.seq += 1
                key = (ev.request_id, ev.position)
                if typ == "impression":
                    counts["impressions"] += 1
                    if (ev.surface is None or ev.surface == "display") and ts >= start_ts:
                        self._open(ev, cat, key)
                else:
                    counts[typ + "s"] += 1
                    self._label(typ, ts, key)
                    if typ == "click":
                        self._click(ev.user_id, ts, ev.item_id)
            counts["events"] += 1
            seen.add(eid)
            self.seen_fifo.append((ts, eid))
            if wm is None or ts > wm:
                self.watermark = ts
        self._emit(final=False)
        self._prune()
        return self._take()

    def flush(self) -> pa.RecordBatch:
        """End of stream: emit every impression still in flight (its window closes now)."""
        self._emit(final=True)
        return self._take()

    def _bad(self, id: str, reason: str) -> None:
        """Count (by kind: the reason up to its first colon) and log a bad event with its id."""
        kind = reason.split(":")[0]
        self.bad[kind] += 1
        n = sum(self.bad.values())
        if len(self.bad_examples) < LOGGED_BAD:
            self.bad_examples.append((id, reason))
        log.log(logging.WARNING if n <= LOGGED_BAD else logging.DEBUG, "stream: bad event %s: %s", id, reason)

    def _arrive(self, ev: Event) -> bool:
        if ev.item_id not in self.cat_of:
            cat = self.cat_index.get(ev.category) if ev.category is not None else None
            if cat is None:
                self._bad(str(ev.event_id), f"unknown_category: arriving item {ev.item_id} has category {ev.category!r}")
                return False
            self.cat_of[ev.item_id] = cat
        self.arrivals[ev.item_id] = ev.ts
        self.counts["arrivals"] += 1
        return True

    def _open(self, ev: Event, cat: int, key: tuple[int, int]) -> None:
        rec = [ev.event_id, ev.ts, ev.user_id, ev.item_id, ev.request_id, ev.position, ev.region, cat, 0,
               self.seq]
        early = self.early.pop(key, None)
        if early:
            for typ, t in early:
                if 0 <= t - ev.ts <= self.window:
                    if typ == "click":
                        rec[_CLICK] = 1
                else:
                    self.counts["labels_outside_window"] += 1
        self.pending.setdefault(key, []).append(rec)
        heapq.heappush(self.heap, (ev.ts, self.seq, rec))

    def _label(self, typ: str, ts: int, key: tuple[int, int]) -> None:
        recs = self.pending.get(key)
        if recs:
            hit = False
            for rec in recs:
                if 0 <= ts - rec[_TS] <= self.window:
                    hit = True
                    if typ == "click":
                        rec[_CLICK] = 1
            if not hit:
                self.counts["labels_outside_window"] += 1
            return
        self.early.setdefault(key, []).append((typ, ts))
        heapq.heappush(self.early_heap, (ts, self.seq, key))

    def _click(self, user: int, ts: int, item: int) -> None:
        lst = self.hist.get(user)
        if lst is None:
            self.hist[user] = [(ts, self.seq, item)]
            return
        if not lst or lst[-1][0] <= ts:
            lst.append((ts, self.seq, item))
        else:
            insort(lst, (ts, self.seq, item))
        if len(lst) > 2 * self.history_len + 16 and self.watermark is not None:
            # Keep L clicks before the oldest impression still to emit (in flight, or to come).
            horizon = self.watermark - self.window - self.lateness
            if self.heap:
                horizon = min(horizon, self.heap[0][0])
            k = bisect_left(lst, (horizon,))
            if k > self.history_len:
                del lst[:k - self.history_len]

    # -- output ---------------------------------------------------------------------------------------
    def _emit(self, final: bool) -> None:
        if self.watermark is None:
            return
        cutoff = self.watermark - self.window - self.lateness  # emit impressions with ts < cutoff
        heap, L, out = self.heap, self.history_len, self._out
        while heap and (final or heap[0][0] < cutoff):
            ts, _, rec = heapq.heappop(heap)
            key = (rec[_REQ], rec[_POS])
            recs = self.pending[key]
            recs.remove(rec)
            if not recs:
                del self.pending[key]
            lst = self.hist.get(rec[_USER], ())
            end = bisect_left(lst, (ts,))
            h = lst[max(0, end - L):end]
            for col, i in (("event_id", _ID), ("ts", _TS), ("user_id", _USER), ("item_id", _ITEM),
                           ("request_id", _REQ), ("position", _POS), ("region", _REGION),
                           ("category_id", _CAT), ("label", _CLICK)):
                out[col].append(rec[i])
            out["hist_len"].append(len(h))
            for t, _, item in h:
                out["hist_item_ids"].append(item)
                out["hist_ts"].append(t)
            self.counts["samples"] += 1

    def _prune(self) -> None:
        if self.watermark is None:
            return
        horizon = self.watermark - self.lateness
        fifo, seen = self.seen_fifo, self.seen
        while fifo and fifo[0][0] < horizon:
            seen.discard(fifo.popleft()[1])
        cutoff = horizon - self.window
        eh = self.early_heap
        while eh and eh[0][0] < cutoff:
            _, _, key = heapq.heappop(eh)
            labels = self.early.get(key)
            if labels is None:
                continue
            keep = [x for x in labels if x[1] >= cutoff]
            self.counts["labels_unjoined"] += len(labels) - len(keep)
            if keep:
                self.early[key] = keep
            else:
                del self.early[key]

    def _reset_out(self) -> None:
        self._out: dict[str, list] = {k: [] for k in ("event_id", "ts", "user_id", "item_id", "request_id",
                                                       "position", "region", "category_id", "label",
                                                       "hist_len", "hist_item_ids", "hist_ts")}

    def _take(self) -> pa.RecordBatch:
        o = self._out
        self._reset_out()
        ts = np.asarray(o["ts"], dtype=np.int64)
        offsets = np.zeros(len(ts) + 1, dtype=np.int32)
        np.cumsum(np.asarray(o["hist_len"], dtype=np.int32), out=offsets[1:])
        hist_items = np.asarray(o["hist_item_ids"], dtype=np.int64)
        hist_cats = np.asarray([self.cat_of[i] for i in o["hist_item_ids"]], dtype=np.int32)
        off = pa.array(offsets)

        def lst(values: np.ndarray, typ: pa.DataType) -> pa.Array:
            return pa.ListArray.from_arrays(off, pa.array(values, typ))

        cols = {
            "ts": pa.array(ts), "user_id": pa.array(o["user_id"], pa.int64()),
            "item_id": pa.array(o["item_id"], pa.int64()), "request_id": pa.array(o["request_id"], pa.int64()),
            "position": pa.array(o["position"], pa.int16()), "region": pa.array(o["region"], pa.int16()),
            "category_id": pa.array(o["category_id"], pa.int32()), "label": pa.array(o["label"], pa.int8()),
            "hist_item_ids": lst(hist_items, pa.int64()), "hist_category_ids": lst(hist_cats, pa.int32()),
            "hist_ts": lst(np.asarray(o["hist_ts"], dtype=np.int64), pa.int64()),
            "split": pa.array(np.where(ts < self.split_ts, "train", "test").tolist(), pa.string()),
            "event_id": pa.array(o["event_id"], pa.int64()),
        }
        return pa.RecordBatch.from_arrays(list(cols.values()), schema=SAMPLE_SCHEMA)

    # -- state ----------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts (events accepted, samples, duplicates, labels...), bad input by kind, and the state."""
        return {**dict(self.counts), "bad": dict(self.bad), "bad_total": sum(self.bad.values()),
                "in_flight": len(self.heap), "watermark": self.watermark,
                "users_with_history": len(self.hist)}

    def snapshot(self) -> bytes:
        """The whole state (a checkpoint saves it beside the source cursor)."""
        if any(self._out[k] for k in self._out):
            raise RuntimeError("Joiner.snapshot: take the emitted samples first")
        return pickle.dumps(self.__dict__, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, state: bytes) -> "Joiner":
        """A joiner from :meth:`snapshot`'s bytes. Only plain data is accepted (numbers, strings, lists,
        tuples, dicts, sets, ``deque``, ``Counter``): a checkpoint that names any other class or function
        is refused (:class:`pickle.UnpicklingError`), so a tampered file runs no code."""
        j = cls.__new__(cls)
        j.__dict__.update(_PlainUnpickler(io.BytesIO(state)).load())
        return j

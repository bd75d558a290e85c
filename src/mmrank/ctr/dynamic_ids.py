"""Dynamic IDs for near-line training: raw ids -> embedding rows, with admission, expiry and a bound.

A plain PyTorch/NumPy table (Monolith's collisionless table, arXiv 2209.07663 Sec. 2.1, without its
hash-map internals): row 0 is padding, row 1 the shared "unknown" row, rows ``2 .. capacity + 1``
belong to one raw id each.

* **Admission**: an id is given its own row on its ``admit_after``-th sighting (that sighting uses the
  row already); before, it maps to the unknown row. ``admit_after=1`` admits on first sight.
* **Expiry**: :meth:`DynamicIdTable.expire` frees the rows of ids unseen for ``expire_after`` seconds of
  event time (and forgets pending counts as old).
* **Bound**: when every row is taken, admitting an id evicts the least recently seen one (LRU).

Every row handed to a new id (fresh, or taken from an expired/evicted one) is reported by
:meth:`observe`, so the trainer re-initialises its embedding and optimiser state: a new id never
inherits another's parameters. The state saves to flat arrays (:meth:`to_arrays`, safetensors) and a
JSON-able config (:meth:`config`); no pickle.

TorchRec's managed-collision modules were not used: ``torchrec`` 1.9.2 (pip download --no-deps) requires
``fbgemm-gpu`` (native kernels built per torch release) and pins ``torchmetrics==1.0.3``; neither is in
the project's torch 2.13 CPU environment, and the table needs only the bookkeeping below.

Example::

    >>> import numpy as np
    >>> t = DynamicIdTable(capacity=4, admit_after=2)
    >>> t.observe(np.array([7, 7, 9]), np.array([0, 1, 2])).rows.tolist()   # 7 admitted on 2nd sight
    [1, 2, 1]
    >>> t.lookup(np.array([7, 9, 0])).tolist()
    [2, 1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrank.errors import ConfigError, DataError

PAD_ROW, UNKNOWN_ROW = 0, 1
FIRST_ROW = 2


@dataclass
class Observed:
    """What :meth:`DynamicIdTable.observe` did: each sighting's row, and the rows given to new ids."""

    rows: np.ndarray       # (n,) int64, one per sighting (UNKNOWN_ROW before admission)
    assigned: np.ndarray   # (k,) int64 rows handed to a new id in this call (re-initialise them)
    evicted: int           # how many of those were taken from a live id (LRU)


class DynamicIdTable:
    """Raw int64 ids -> rows ``2 .. capacity + 1`` (0 padding, 1 unknown); see the module docstring.

    Args:
        capacity: the most ids holding a row at once (the bound).
        admit_after: sightings needed for a row (N >= 1).
        expire_after: seconds of event time after which an unseen id loses its row (None: never).
    """

    def __init__(self, capacity: int, admit_after: int = 1, expire_after: int | None = None) -> None:
        if capacity < 1:
            raise ConfigError(f"dynamic ids: capacity must be >= 1, got {capacity}")
        if admit_after < 1:
            raise ConfigError(f"dynamic ids: admit_after must be >= 1, got {admit_after}")
        if expire_after is not None and expire_after < 1:
            raise ConfigError(f"dynamic ids: expire_after must be >= 1 second or None, got {expire_after}")
        self.capacity, self.admit_after, self.expire_after = capacity, admit_after, expire_after
        self.row_id = np.full(capacity + FIRST_ROW, -1, np.int64)       # raw id holding each row (-1 free)
        self.last_seen = np.full(capacity + FIRST_ROW, np.iinfo(np.int64).min, np.int64)
        self.row_of: dict[int, int] = {}                                 # raw id -> row
        self.pending: dict[int, tuple[int, int]] = {}                    # raw id -> (sightings, last ts)
        self.stats = {"admitted": 0, "evicted": 0, "expired": 0}

    @property
    def n_rows(self) -> int:
        """Rows of the embedding table this indexes (``capacity + 2``)."""
        return self.capacity + FIRST_ROW

    def __len__(self) -> int:
        return len(self.row_of)

    def __contains__(self, raw: int) -> bool:
        return int(raw) in self.row_of

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` without counting a sighting (histories, scoring); unknown ids -> row 1."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return np.zeros(ids.shape, np.int64)
        uniq, inv = np.unique(ids, return_inverse=True)
        get = self.row_of.get
        rows = np.fromiter((get(int(u), UNKNOWN_ROW) for u in uniq), np.int64, len(uniq))
        return rows[inv].reshape(ids.shape)

    def observe(self, ids: np.ndarray, ts: np.ndarray) -> Observed:
        """Count one sighting of each ``ids[i]`` at event time ``ts[i]`` (in order), admit ids that reach
        ``admit_after`` sightings, and return each sighting's row."""
        ids, ts = np.asarray(ids, np.int64), np.asarray(ts, np.int64)
        if ids.shape != ts.shape:
            raise DataError(f"dynamic ids: {len(ids)} ids but {len(ts)} timestamps")
        rows = np.full(len(ids), UNKNOWN_ROW, np.int64)
        assigned: list[int] = []
        evicted = 0
        if not len(ids):
            return Observed(rows, np.zeros(0, np.int64), 0)
        order = np.argsort(ids, kind="stable")          # sightings grouped by id, in stream order
        sid = ids[order]
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        ends = np.r_[starts[1:], len(sid)]
        for a, z in zip(starts.tolist(), ends.tolist()):
            raw = int(sid[a])
            idx = order[a:z]
            last = int(ts[idx].max())
            row = self.row_of.get(raw)
            if row is None:
                seen, _ = self.pending.get(raw, (0, 0))
                need = self.admit_after - seen          # the need-th sighting here gets the row
                if need > len(idx):
                    self.pending[raw] = (seen + len(idx), last)
                    continue
                self.pending.pop(raw, None)
                row, was_live = self._take_row()
                evicted += was_live
                self.row_id[row] = raw
                self.row_of[raw] = row
                assigned.append(row)
                self.stats["admitted"] += 1
                rows[idx[need - 1:]] = row
            else:
                rows[idx] = row
            self.last_seen[row] = max(int(self.last_seen[row]), last)
        self.stats["evicted"] += evicted
        return Observed(rows, np.asarray(assigned, np.int64), evicted)

    def _take_row(self) -> tuple[int, bool]:
        free = np.flatnonzero(self.row_id[FIRST_ROW:] < 0)
        if len(free):
            return int(free[0]) + FIRST_ROW, False
        row = int(np.argmin(self.last_seen[FIRST_ROW:])) + FIRST_ROW   # least recently seen
        del self.row_of[int(self.row_id[row])]
        return row, True

    def expire(self, now: int) -> np.ndarray:
        """Free the rows of ids unseen since ``now - expire_after`` (and drop pending counts as old);
        returns the freed rows."""
        if self.expire_after is None:
            return np.zeros(0, np.int64)
        cutoff = int(now) - self.expire_after
        live = self.row_id >= 0
        stale = np.flatnonzero(live & (self.last_seen < cutoff))
        for row in stale.tolist():
            del self.row_of[int(self.row_id[row])]
        self.row_id[stale] = -1
        self.last_seen[stale] = np.iinfo(np.int64).min
        self.pending = {k: v for k, v in self.pending.items() if v[1] >= cutoff}
        self.stats["expired"] += len(stale)
        return stale.astype(np.int64)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, rows)`` of every id holding a row, ids sorted."""
        rows = np.flatnonzero(self.row_id >= 0)
        ids = self.row_id[rows]
        order = np.argsort(ids)
        return ids[order], rows[order].astype(np.int64)

    def config(self) -> dict:
        return {"capacity": self.capacity, "admit_after": self.admit_after,
                "expire_after": self.expire_after, "stats": dict(self.stats)}

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The state as flat int64 arrays (safetensors), keys prefixed by ``prefix``."""
        keys = np.fromiter(self.pending.keys(), np.int64, len(self.pending))
        vals = np.array(list(self.pending.values()), np.int64).reshape(-1, 2)
        return {f"{prefix}.row_id": self.row_id.copy(), f"{prefix}.last_seen": self.last_seen.copy(),
                f"{prefix}.pending_ids": keys, f"{prefix}.pending": vals}

    @classmethod
    def from_arrays(cls, conf: dict, arrays: dict[str, np.ndarray], prefix: str) -> DynamicIdTable:
        t = cls(int(conf["capacity"]), int(conf["admit_after"]), conf.get("expire_after"))
        row_id = np.asarray(arrays[f"{prefix}.row_id"], np.int64)
        if row_id.shape != t.row_id.shape:
            raise DataError(f"dynamic ids {prefix}: {len(row_id)} rows saved, config says {t.n_rows}")
        t.row_id = row_id.copy()
        t.last_seen = np.asarray(arrays[f"{prefix}.last_seen"], np.int64).copy()
        live = np.flatnonzero(t.row_id >= 0)
        t.row_of = {int(t.row_id[r]): int(r) for r in live}
        ids, vals = arrays[f"{prefix}.pending_ids"], arrays[f"{prefix}.pending"]
        t.pending = {int(k): (int(v[0]), int(v[1])) for k, v in zip(ids, vals)}
        t.stats = {**t.stats, **conf.get("stats", {})}
        return t

    def copy(self) -> DynamicIdTable:
        """An independent copy (a published snapshot)."""
        return DynamicIdTable.from_arrays(self.config(), self.to_arrays("t"), "t")

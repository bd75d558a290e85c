"""Click pairs for the click-supervised visual encoder (issue 22, the ``click_visual`` switch).

A pair is (the item a user clicked, the item the same user clicked next): its two photos are a
positive pair of the image tower's InfoNCE (:class:`mmrank.pretrain.losses.ClickVisualLoss`), the
other pairs of the batch its negatives.

Point in time:

* only ``click`` events of ``R/data/events.parquet`` with ``ts <`` the pre-training split are read
  (:func:`pretrain_cutoff`: ``split_ts`` of ``R/data/manifest.json``, and never later than the
  earliest test pair of ``R/data/pairs.parquet``), so no click of the test period reaches training;
* a pair's time is the time of its second click, and its first click is the user's latest click
  *strictly before* it: a pair uses no click at or after its own time but its own second click.

:func:`check_point_in_time` states both conditions; the builder is vectorised (one sort and one
``searchsorted``), with no Python loop per click.

Example::

    >>> import numpy as np
    >>> p = click_pairs(np.array([7, 7, 7]), np.array([1, 2, 3]), np.array([10, 20, 30]), cutoff=25)
    >>> p.first.tolist(), p.second.tolist(), p.ts.tolist()
    ([1], [2], [20])
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmrank.data.io import read_clicks
from mmrank.errors import DataError


@dataclass
class ClickPairs:
    """Click pairs (P rows): ``user``, ``first`` / ``second`` item ids, ``first_ts`` and ``ts`` (the
    second click's time, the pair's own), all (P,) int64; ``cutoff`` the split they precede."""

    user: np.ndarray
    first: np.ndarray
    second: np.ndarray
    first_ts: np.ndarray
    ts: np.ndarray
    cutoff: int

    def __len__(self) -> int:
        return len(self.ts)

    def digest(self) -> str:
        """SHA-256 (16 hex) of the pairs and the cutoff (the encoder's lineage records it)."""
        h = hashlib.sha256(str(int(self.cutoff)).encode())
        for a in (self.user, self.first, self.second, self.first_ts, self.ts):
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
        return h.hexdigest()[:16]


def pretrain_cutoff(run: str | Path) -> int:
    """The pre-training split: clicks at or after it belong to the test period. ``split_ts`` of
    ``R/data/manifest.json`` when it has one, capped at the earliest ``test`` pair of
    ``R/data/pairs.parquet``; a DataError when neither says where the split lies."""
    from mmrank.data.io import read_table

    run = Path(run)
    cut: int | None = None
    mpath = run / "data" / "manifest.json"
    if mpath.exists():
        split = json.loads(mpath.read_text()).get("split_ts")
        cut = None if split is None else int(split)
    ppath = run / "data" / "pairs.parquet"
    if ppath.exists():
        t = read_table(ppath, "pairs", columns=["ts", "split"])
        test = t.column("split").to_numpy(zero_copy_only=False) == "test"
        if test.any():
            first_test = int(t.column("ts").to_numpy()[test].min())
            cut = first_test if cut is None else min(cut, first_test)
    if cut is None:
        raise DataError("no split_ts in data/manifest.json and no 'test' pair: the pre-training split "
                        "is unknown", file=str(ppath), column="split")
    return cut


def click_pairs(user: np.ndarray, item: np.ndarray, ts: np.ndarray, cutoff: int,
                max_gap: int | None = None) -> ClickPairs:
    """Pair each click before ``cutoff`` with the same user's latest click strictly before it.

    Args:
        user, item, ts: (C,) the clicks (any order; ties in ``ts`` keep the given order).
        cutoff: clicks at or after it are dropped first.
        max_gap: drop a pair whose clicks lie more than this many seconds apart (None: keep).

    A pair of one item with itself (a re-click) is dropped: its two photos are the same. Several
    clicks at one time (one request) each pair with the same earlier click.
    """
    user, item, ts = (np.asarray(a, np.int64) for a in (user, item, ts))
    if not (len(user) == len(item) == len(ts)):
        raise ValueError(f"user, item, ts: lengths {len(user)}, {len(item)}, {len(ts)} differ")
    keep = ts < int(cutoff)
    user, item, ts = user[keep], item[keep], ts[keep]
    if len(ts) and ts.min() < 0:
        raise DataError(f"ts must be >= 0, got {int(ts.min())}", column="ts")
    order = np.lexsort((ts, user))                        # by user, then time (stable on ties)
    user, item, ts = user[order], item[order], ts[order]
    key = (user << 32) | ts if len(ts) == 0 or ts.max() < (1 << 32) else None
    if key is None:
        raise DataError(f"ts must be < 2^32 seconds, got {int(ts.max())}", column="ts")
    prev = np.searchsorted(key, key, side="left") - 1     # the latest click with a smaller key
    ok = prev >= 0
    prev_c = np.where(ok, prev, 0)
    ok &= user[prev_c] == user                            # same user, so ts[prev] < ts (strictly)
    ok &= item[prev_c] != item
    if max_gap is not None:
        ok &= ts - ts[prev_c] <= int(max_gap)
    i = np.flatnonzero(ok)
    j = prev_c[i]
    return ClickPairs(user[i], item[j], item[i], ts[j], ts[i], int(cutoff))


def check_point_in_time(pairs: ClickPairs, cutoff: int) -> None:
    """DataError unless every pair's first click is strictly before its own time and its time is
    strictly before ``cutoff`` (the pre-training split)."""
    late = np.flatnonzero(pairs.ts >= int(cutoff))
    if len(late):
        r = int(late[0])
        raise DataError(f"click pair at ts {int(pairs.ts[r])} is at or after the pre-training split "
                        f"{int(cutoff)}", row=r, column="ts")
    ahead = np.flatnonzero(pairs.first_ts >= pairs.ts)
    if len(ahead):
        r = int(ahead[0])
        raise DataError(f"click pair at ts {int(pairs.ts[r])} uses a click at ts "
                        f"{int(pairs.first_ts[r])}, not before its own time", row=r, column="first_ts")


def run_click_pairs(run: str | Path, max_gap: int | None = None) -> ClickPairs:
    """The run's click pairs: the clicks before :func:`pretrain_cutoff`, paired, checked."""
    cut = pretrain_cutoff(run)
    pairs = click_pairs(*read_clicks(run, cut, "click-visual pre-training"), cutoff=cut, max_gap=max_gap)
    check_point_in_time(pairs, cut)
    return pairs


@dataclass
class ClickVisualInputs:
    """What the trainer's ``click_visual`` terms read: ``first``, ``second`` (P,) item *rows* of the
    click pairs (both with a photo); ``views`` (V, N, ...) backbone features of V photo views of every
    item (view 0 the photo itself, :mod:`mmrank.pretrain.augment`); ``photo_rows`` the item rows with
    a photo (the self-supervised term draws from them uniformly)."""

    first: np.ndarray
    second: np.ndarray
    views: "torch.Tensor"  # noqa: F821 (torch imported by the trainer)
    photo_rows: np.ndarray


def to_rows(pairs: ClickPairs, item_ids: np.ndarray, has_image: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs' items as catalog rows ``(first, second)``; pairs with an item the catalog lacks,
    or (``has_image`` (N,) bool) without a photo, are left out."""
    item_ids = np.asarray(item_ids, np.int64)
    order = np.argsort(item_ids, kind="stable")
    srt = item_ids[order]

    def rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.clip(np.searchsorted(srt, ids), 0, max(len(srt) - 1, 0))
        found = (srt[pos] == ids) if len(srt) else np.zeros(len(ids), bool)
        return order[pos] if len(srt) else np.zeros(len(ids), np.int64), found

    a, fa = rows(pairs.first)
    b, fb = rows(pairs.second)
    ok = fa & fb
    if has_image is not None:
        ok &= np.asarray(has_image, bool)[np.where(ok, a, 0)] & np.asarray(has_image, bool)[np.where(ok, b, 0)]
    return a[ok].astype(np.int64), b[ok].astype(np.int64)

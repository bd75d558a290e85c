"""Candidate retrieval: what a production system could fetch for a request, before it orders it.

Implements the retrieval step of the market design's *two surfaces*: items grouped by region (what is
sold there) and by region and type, drawn by long-tailed exposure among the items alive at the
request's time; look-alikes in content space (a display feed's "more like what you clicked"); and the
row operations the surfaces order candidates with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrank.data.market.catalog import Catalog
from mmrank.data.market.world import World


@dataclass
class Groups:
    """Items of each group in creation order (so the items alive at t are a prefix), with cumulative
    exposure weights laid end to end (group g occupies ``starts[g]:starts[g+1]``)."""

    members: np.ndarray
    starts: np.ndarray
    cum_w: np.ndarray
    created: np.ndarray

    @classmethod
    def of(cls, member: np.ndarray, code: np.ndarray, created: np.ndarray, weight: np.ndarray,
           n_groups: int) -> "Groups":
        """Items ``member`` in groups ``code`` (0..n_groups-1), weighted by ``weight``."""
        order = np.lexsort((created[member], code))
        member, code = member[order], code[order]
        counts = np.bincount(code, minlength=n_groups)
        starts = np.concatenate([[0], np.cumsum(counts)])
        # Cumulative weights laid end to end: group g's live prefix is a contiguous range.
        cum_w = np.cumsum(weight[member])
        return cls(member, starts, cum_w, created[member])

    def live(self, groups: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """How many items of each request's group exist at its time."""
        out = np.zeros(len(groups), np.int64)
        for g in np.unique(groups):
            sel = groups == g
            a, z = self.starts[g], self.starts[g + 1]
            out[sel] = np.searchsorted(self.created[a:z], ts[sel], side="right")
        return out

    def draw(self, groups: np.ndarray, n_live: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` items per request from the live prefix of its group, by exposure; -1 if none live."""
        last = len(self.cum_w) - 1
        lo = np.minimum(self.starts[groups], last)
        hi = np.minimum(lo + np.maximum(n_live, 1) - 1, last)
        base = np.where(lo > 0, self.cum_w[np.maximum(lo - 1, 0)], 0.0)
        total = self.cum_w[hi] - base
        u = base[:, None] + rng.random((len(groups), k)) * total[:, None]
        pos = np.clip(np.searchsorted(self.cum_w, u, side="right"), lo[:, None], hi[:, None])
        out = self.members[pos]
        return np.where((n_live > 0)[:, None], out, -1)


def region_groups(cat: Catalog, world: World, n_regions: int) -> tuple[Groups, Groups]:
    """The items sold in each region (display, any-type search), and by region and type."""
    types = cat.attrs["article_type"]
    n_types = len(cat.vocab["article_type"])
    reg_item, reg_code = np.nonzero(world.available)
    by_region = Groups.of(reg_item, reg_code.astype(np.int64), world.created, world.pop, n_regions)
    by_type = Groups.of(reg_item, reg_code.astype(np.int64) * n_types + types[reg_item],
                        world.created, world.pop, n_regions * n_types)
    return by_region, by_type


def dedupe_rows(cands: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` distinct non-negative entries of each row of ``cands`` (B, M), order kept; -1 pads."""
    b, m = cands.shape
    order = np.argsort(cands, axis=1, kind="stable")
    srt = np.take_along_axis(cands, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    keep = ~dup & (cands >= 0)
    rank = np.cumsum(keep, axis=1) - 1
    rank = np.where(keep & (rank < k), rank, k)  # slot k = discard
    out = np.full((b, k + 1), -1, dtype=cands.dtype)
    rows = np.repeat(np.arange(b), m)
    out[rows, rank.ravel()] = cands.ravel()
    return out[:, :k]


def top_by(score: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``items`` sorted by descending ``score`` (-1 entries last), cut to ``k``."""
    score = np.where(items >= 0, score, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(items, order, axis=1), np.take_along_axis(score, order, axis=1)


def content_neighbours(content: np.ndarray, k: int = 10) -> np.ndarray:
    """(I, k) nearest items in content space (FAISS exact search), the item itself excluded."""
    import faiss

    x = np.ascontiguousarray(content, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nn = index.search(x, k + 1)
    own = nn == np.arange(len(x))[:, None]
    # Drop the item itself (or, among exact duplicates, the last column).
    drop = np.where(own.any(axis=1), np.argmax(own, axis=1), k)
    keep = np.ones_like(nn, dtype=bool)
    keep[np.arange(len(x)), drop] = False
    return nn[keep].reshape(len(x), k).astype(np.int64)

"""Search lists for re-ranking: ``R/data/lists.parquet`` (schema :data:`mmrank.data.schemas.LISTS`) in
memory, their vocabularies, and padded list batches.

One row per search request; its candidates (about 50, in the logged production order) and the user's
point-in-time behaviour are kept in CSR form (``offsets`` into flat arrays). A batch pads a set of
requests to ``(B, C)`` candidates: either the **shown** ones (what the user saw, the only ones with
labels: training and the logged-label metrics) or **all** retrieved ones (re-ranking for the evaluator).

The behaviour sequence is filtered to each candidate's category inside the model (the paper's
two-stage behaviour modelling): the batch carries the history with its categories.

Example::

    >>> lists = load_lists("runs/demo/data/lists.parquet")           # doctest: +SKIP
    >>> space = ListSpace.fit(lists)                                     # doctest: +SKIP
    >>> batch = make_batch(lists, space, lists.train_rows()[:64], "shown")   # doctest: +SKIP
    >>> batch["item"].shape                                              # doctest: +SKIP
    torch.Size([64, 20])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from mmrank.ctr.data import Vocab, concat_ranges
from mmrank.data.io import iter_batches as iter_table_batches
from mmrank.data.schemas import HISTORY_LEN
from mmrank.errors import DataError

TASKS = ("click", "cart", "purchase")
# numeric candidate features (relative to every retrieved candidate of the request)
NUMERIC = ("log_price", "rel_log_price", "log_sales", "rel_log_sales", "prod_score_z")
PRICE_FEATURES = (0, 1)
SALES_FEATURES = (2, 3)

_CAND = ("item_ids", "positions", "prod_scores", "prices", "sales", "category_ids", "clicks", "carts", "purchases")
_HIST = ("hist_item_ids", "hist_category_ids", "hist_ts")


@dataclass
class Lists:
    """Search requests with CSR candidates and histories (raw ids)."""

    request_id: np.ndarray   # (R,) int64
    ts: np.ndarray           # (R,) int64
    user_id: np.ndarray      # (R,) int64
    region: np.ndarray       # (R,) int64
    query: list[str]         # (R,) "text:<query>" | "image:<opaque id>" | ""
    is_train: np.ndarray     # (R,) bool
    offsets: np.ndarray      # (R + 1,) into the candidate arrays
    item_id: np.ndarray      # (n,) int64
    position: np.ndarray     # (n,) int64, -1 = not shown
    prod_score: np.ndarray   # (n,) float32
    price: np.ndarray        # (n,) float64
    sales: np.ndarray        # (n,) int64
    category_id: np.ndarray  # (n,) int64
    click: np.ndarray        # (n,) int8
    cart: np.ndarray         # (n,) int8
    purchase: np.ndarray     # (n,) int8
    hist_offsets: np.ndarray  # (R + 1,)
    hist_item_id: np.ndarray  # (h,) int64
    hist_category_id: np.ndarray  # (h,) int64
    source: str = ""
    propensity: np.ndarray | None = None     # (n,) a stochastic logging policy's q at the shown slot (0: not shown)
    position_prob: np.ndarray | None = None  # (n, K) its P(candidate shown at position j)

    def logging_marginals(self) -> np.ndarray:
        """(n, K) each candidate's probability of being shown at each position under the logging policy:
        logged by a stochastic policy, else (deterministic) 1 at the logged position."""
        if self.position_prob is not None:
            return self.position_prob
        k = int(self.position.max(initial=-1)) + 1
        out = np.zeros((len(self.position), max(k, 1)), np.float32)
        shown = np.flatnonzero(self.position >= 0)
        out[shown, self.position[shown]] = 1.0
        return out

    def __len__(self) -> int:
        return len(self.request_id)

    @property
    def shown(self) -> np.ndarray:
        return self.position >= 0

    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(self.is_train)

    def test_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.is_train)

    def candidates(self, r: int) -> slice:
        return slice(int(self.offsets[r]), int(self.offsets[r + 1]))

    def label(self, task: str) -> np.ndarray:
        return {"click": self.click, "cart": self.cart, "purchase": self.purchase}[task]


def _flat(batch, name: str) -> tuple[np.ndarray, np.ndarray]:
    col = batch.column(name)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, pc.list_flatten(col).to_numpy(zero_copy_only=False)


def load_lists(path: str | Path, history_len: int = HISTORY_LEN) -> Lists:
    """Stream a LISTS Parquet file into memory; keep each history's last ``history_len`` clicks.

    Raises :class:`DataError` naming the file, row and column of the first inconsistent row: candidate
    lists of unequal lengths, a history click at or after the request's ``ts`` (leakage), labels
    on a candidate that was not shown, a split other than train/test.
    """
    path = Path(path)
    cols = ["request_id", "ts", "user_id", "region", "query_text", "query_image", *_CAND, *_HIST, "split"]
    req: dict[str, list] = {c: [] for c in ("request_id", "ts", "user_id", "region", "split")}
    queries: list[str] = []
    cand: dict[str, list] = {c: [] for c in _CAND}
    hist: dict[str, list] = {c: [] for c in _HIST[:2]}
    cand_lens, hist_lens = [], []
    offset = 0
    import pyarrow.parquet as pq

    policy_cols = [c for c in ("propensities", "position_probs") if path.exists() and c in pq.read_schema(path).names]
    cols += policy_cols
    policy: dict[str, list] = {c: [] for c in policy_cols}
    for batch in iter_table_batches(path, "lists", columns=cols):
        if "propensities" in policy:
            policy["propensities"].append(_flat(batch, "propensities")[1].astype(np.float32))
        if "position_probs" in policy:
            inner = pc.list_flatten(batch.column("position_probs"))
            width = inner.type.list_size
            policy["position_probs"].append(
                pc.list_flatten(inner).to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32))
        for c in req:
            req[c].append(batch.column(c).to_numpy(zero_copy_only=False))
        split = req["split"][-1]
        bad = ~np.isin(split, ["train", "test"])
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"split must be 'train' or 'test', got {split[r]!r}", file=str(path),
                            row=offset + r, column="split")
        qt, qi = batch.column("query_text").to_pylist(), batch.column("query_image").to_pylist()
        queries += [f"text:{t}" if t else (f"image:{i}" if i else "") for t, i in zip(qt, qi)]
        lens0 = None
        for c in _CAND:
            lens, vals = _flat(batch, c)
            if lens0 is None:
                lens0 = lens
            elif not np.array_equal(lens, lens0):
                r = int(np.flatnonzero(lens != lens0)[0])
                raise DataError(f"{lens[r]} values but {lens0[r]} item_ids", file=str(path), row=offset + r, column=c)
            cand[c].append(vals)
        cand_lens.append(lens0)
        pos = cand["positions"][-1]
        for c in ("clicks", "carts", "purchases"):
            v = cand[c][-1]
            wrong = ((v != 0) & (v != 1)) | ((v != 0) & (pos < 0))
            if wrong.any():
                k = int(np.flatnonzero(wrong)[0])
                r = int(np.searchsorted(np.cumsum(lens0), k, side="right"))
                raise DataError(f"label {v[k]} on candidate {k - int(np.sum(lens0[:r]))} "
                                f"({'not shown' if pos[k] < 0 else 'must be 0 or 1'})",
                                file=str(path), row=offset + r, column=c)
        hl, hi = _flat(batch, "hist_item_ids")
        hc_l, hc = _flat(batch, "hist_category_ids")
        ht_l, ht = _flat(batch, "hist_ts")
        for name, ln in (("hist_category_ids", hc_l), ("hist_ts", ht_l)):
            if not np.array_equal(ln, hl):
                r = int(np.flatnonzero(ln != hl)[0])
                raise DataError(f"{ln[r]} values but {hl[r]} hist_item_ids", file=str(path), row=offset + r, column=name)
        ts_rep = np.repeat(req["ts"][-1].astype(np.int64), hl)
        late = ht.astype(np.int64) >= ts_rep
        if late.any():
            k = int(np.flatnonzero(late)[0])
            r = int(np.searchsorted(np.cumsum(hl), k, side="right"))
            raise DataError(f"history click at ts {int(ht[k])} is not strictly before the request's ts "
                            f"{int(ts_rep[k])} (point-in-time leakage)", file=str(path), row=offset + r,
                            column="hist_ts")
        if (hl > history_len).any():      # the most recent history_len clicks (most recent last)
            keep = np.minimum(hl, history_len)
            idx = concat_ranges(np.cumsum(hl) - keep, keep)
            hi, hc, hl = hi[idx], hc[idx], keep
        hist["hist_item_ids"].append(hi.astype(np.int64))
        hist["hist_category_ids"].append(hc.astype(np.int64))
        hist_lens.append(hl)
        offset += batch.num_rows
    if offset == 0:
        raise DataError("no rows", file=str(path))

    def cat(parts: list, dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype)

    cl, hl = np.concatenate(cand_lens), np.concatenate(hist_lens)
    return Lists(
        request_id=cat(req["request_id"], np.int64), ts=cat(req["ts"], np.int64),
        user_id=cat(req["user_id"], np.int64), region=cat(req["region"], np.int64), query=queries,
        is_train=np.concatenate(req["split"]) == "train",
        offsets=np.concatenate([[0], np.cumsum(cl)]).astype(np.int64),
        item_id=cat(cand["item_ids"], np.int64), position=cat(cand["positions"], np.int64),
        prod_score=cat(cand["prod_scores"], np.float32), price=cat(cand["prices"], np.float64),
        sales=cat(cand["sales"], np.int64), category_id=cat(cand["category_ids"], np.int64),
        click=cat(cand["clicks"], np.int8), cart=cat(cand["carts"], np.int8),
        purchase=cat(cand["purchases"], np.int8),
        hist_offsets=np.concatenate([[0], np.cumsum(hl)]).astype(np.int64),
        hist_item_id=cat(hist["hist_item_ids"], np.int64),
        hist_category_id=cat(hist["hist_category_ids"], np.int64), source=str(path),
        propensity=np.concatenate(policy["propensities"]) if policy.get("propensities") else None,
        position_prob=np.concatenate(policy["position_probs"]) if policy.get("position_probs") else None)


@dataclass
class ListSpace:
    """Vocabularies a re-ranker is trained with: ID vocabularies from the training split only (an item
    first seen at test time shares the OOV embedding), and the representation rows (``vec_items``)."""

    items: Vocab
    users: Vocab
    n_categories: int
    n_regions: int
    vec_items: Vocab

    @classmethod
    def fit(cls, lists: Lists, vec_item_ids: np.ndarray | None = None) -> ListSpace:
        tr = lists.train_rows()
        cand = concat_ranges(lists.offsets[tr], np.diff(lists.offsets)[tr])
        hist = concat_ranges(lists.hist_offsets[tr], np.diff(lists.hist_offsets)[tr])
        items = Vocab.fit(lists.item_id[cand][lists.shown[cand]], lists.hist_item_id[hist])
        n_cat = int(max(lists.category_id.max(initial=0), lists.hist_category_id.max(initial=0))) + 2
        vec = Vocab.of(vec_item_ids if vec_item_ids is not None else np.zeros(0, np.int64))
        return cls(items, Vocab.fit(lists.user_id[tr]), n_cat, int(lists.region.max()) + 1, vec)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"items": self.items.ids, "users": self.users.ids, "vec_items": self.vec_items.ids,
                "sizes": np.array([self.n_categories, self.n_regions], np.int64)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> ListSpace:
        return cls(Vocab(a["items"]), Vocab(a["users"]), int(a["sizes"][0]), int(a["sizes"][1]), Vocab(a["vec_items"]))


def candidate_index(lists: Lists, rows: np.ndarray, which: str) -> list[np.ndarray]:
    """Flat candidate indices of each request in ``rows``: ``shown`` ones (in shown order) or ``all``
    (in the logged production order)."""
    if which not in ("shown", "all"):
        raise ValueError(f"which: expected 'shown' or 'all', got {which!r}")
    out = []
    for r in rows:
        idx = np.arange(lists.offsets[r], lists.offsets[r + 1])
        if which == "shown":
            idx = idx[lists.position[idx] >= 0]
            idx = idx[np.argsort(lists.position[idx], kind="stable")]
        out.append(idx)
    return out


def _numeric(lists: Lists, rows: np.ndarray, cand: list[np.ndarray]) -> list[np.ndarray]:
    """Numeric features of the candidates ``cand[k]`` of request ``rows[k]``; the list statistics
    (mean log price and sales, production-score mean and std) are those of **every** retrieved
    candidate of the request, whichever subset is batched (the shown ones in training, all of them or a
    generator's partial list at re-ranking), so a candidate's features do not depend on that choice."""
    feats = []
    for r, idx in zip(rows, cand):
        every = np.arange(lists.offsets[r], lists.offsets[r + 1])
        lp_all = np.log1p(np.maximum(lists.price[every], 0.0))
        ls_all = np.log1p(np.maximum(lists.sales[every], 0).astype(np.float64))
        ps_all = lists.prod_score[every].astype(np.float64)
        sd = ps_all.std() if len(every) else 0.0
        lp = np.log1p(np.maximum(lists.price[idx], 0.0))
        ls = np.log1p(np.maximum(lists.sales[idx], 0).astype(np.float64))
        ps = lists.prod_score[idx].astype(np.float64)
        feats.append(np.stack([lp / 5.0, lp - lp_all.mean(), ls / 5.0, ls - ls_all.mean(),
                               (ps - ps_all.mean()) / (sd if sd > 0 else 1.0)], axis=1))
    return feats


def make_batch(lists: Lists, space: ListSpace, rows: np.ndarray, which: str = "shown",
               query_index: np.ndarray | None = None, cand: list[np.ndarray] | None = None,
               history_len: int = HISTORY_LEN) -> dict[str, torch.Tensor]:
    """Pad requests ``rows`` into tensors: candidates ``(B, C)`` (``pad`` True at padding), numeric
    features ``(B, C, F)``, labels ``(B, C)`` float, the request's user, region and query row
    ``(B,)``, and the history ``(B, L)`` with its mask. ``cand`` overrides which candidates (flat
    indices per request, e.g. a generator's partial list); ``flat`` (B, C) holds them (-1 at padding)."""
    rows = np.asarray(rows, np.int64)
    cand = cand if cand is not None else candidate_index(lists, rows, which)
    b = len(rows)
    c = max(1, max((len(i) for i in cand), default=1))
    flat = np.full((b, c), -1, np.int64)
    for k, idx in enumerate(cand):
        flat[k, :len(idx)] = idx
    pad = flat < 0
    f0 = np.where(pad, 0, flat)
    num = np.zeros((b, c, len(NUMERIC)), np.float32)
    for k, x in enumerate(_numeric(lists, rows, cand)):
        num[k, :len(x)] = x
    item = np.where(pad, 0, space.items.lookup(lists.item_id[f0]))
    vitem = np.where(pad, 0, space.vec_items.lookup(lists.item_id[f0]))
    category = np.where(pad, 0, lists.category_id[f0] + 1)
    h_len = np.minimum(np.diff(lists.hist_offsets)[rows], history_len)
    length = max(1, int(h_len.max(initial=0)))
    hpos = concat_ranges(lists.hist_offsets[rows + 1] - h_len, h_len)
    hmask = np.arange(length)[None, :] < h_len[:, None]
    hist_item = np.zeros((b, length), np.int64)
    hist_v = np.zeros((b, length), np.int64)
    hist_cat = np.zeros((b, length), np.int64)
    hist_item[hmask] = space.items.lookup(lists.hist_item_id[hpos])
    hist_v[hmask] = space.vec_items.lookup(lists.hist_item_id[hpos])
    hist_cat[hmask] = lists.hist_category_id[hpos] + 1
    out = {"item": item, "item_v": vitem, "category": category, "num": num, "pad": pad, "flat": flat,
           "user": space.users.lookup(lists.user_id[rows]), "region": lists.region[rows],
           "hist_item": hist_item, "hist_item_v": hist_v, "hist_category": hist_cat, "hist_mask": hmask,
           "query": (np.zeros(b, np.int64) if query_index is None else query_index[rows])}
    for t in TASKS:
        out[t] = np.where(pad, 0, lists.label(t)[f0]).astype(np.float32)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}

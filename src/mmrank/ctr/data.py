"""CTR samples in memory and their mini-batches.

``R/data/ctr_samples.parquet`` (schema :data:`mmrank.data.schemas.CTR_SAMPLES`) is streamed with pyarrow
into NumPy arrays: one entry per impression plus the behaviour sequences in CSR form (``offsets`` into
one flat array), which costs a fraction of a padded ``(N, L)`` copy. :func:`iter_batches` pads each
mini-batch into ``(B, L)`` int64 tensors and a boolean mask (history left-aligned, most recent last).

Raw ids are mapped to dense indices by :class:`Vocab` (0 = padding, 1 = out of vocabulary). The ID
vocabularies are built from the training split only, so an item never seen in training (a new item)
shares the OOV embedding, as in production; the representation index (``*_v``) covers every item
that has a vector.

Example::

    >>> data = load_samples("runs/demo/data/ctr_samples.parquet")        # doctest: +SKIP
    >>> space = FeatureSpace.fit(data)                                      # doctest: +SKIP
    >>> enc = space.encode(data)                                            # doctest: +SKIP
    >>> batch = next(iter_batches(enc, enc.train_rows(), 1024))             # doctest: +SKIP
    >>> batch["hist_item"].shape                                            # doctest: +SKIP
    torch.Size([1024, 50])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mmrank.data.io import iter_batches as iter_table_batches
from mmrank.data.schemas import HISTORY_LEN
from mmrank.errors import DataError

PAD, OOV = 0, 1
MAX_POSITION = 64


@dataclass
class CtrSamples:
    """Impressions (one row each) with CSR behaviour sequences (raw ids)."""

    ts: np.ndarray            # (N,) int64
    user_id: np.ndarray       # (N,) int64
    item_id: np.ndarray       # (N,) int64
    request_id: np.ndarray    # (N,) int64
    position: np.ndarray      # (N,) int16
    region: np.ndarray        # (N,) int16
    category_id: np.ndarray   # (N,) int32
    label: np.ndarray         # (N,) int8
    is_train: np.ndarray      # (N,) bool
    hist_offsets: np.ndarray  # (N + 1,) int64
    hist_item_id: np.ndarray  # (nnz,) int64
    hist_category_id: np.ndarray  # (nnz,) int32
    source: str = ""

    def __len__(self) -> int:
        return len(self.item_id)

    def hist_lengths(self) -> np.ndarray:
        return np.diff(self.hist_offsets)


def _flatten(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> (lengths (n,), flat values)."""
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return lengths.astype(np.int64), values


def load_samples(path: str | Path, history_len: int = HISTORY_LEN, require_split: bool = True) -> CtrSamples:
    """Stream a CTR_SAMPLES Parquet file into memory; keep the last ``history_len`` clicks of each history.

    Raises :class:`DataError` naming the file, row and column of the first inconsistent row.
    """
    path = Path(path)
    cols = ["ts", "user_id", "item_id", "request_id", "position", "region", "category_id", "label",
            "hist_item_ids", "hist_category_ids", "split"]
    parts: dict[str, list[np.ndarray]] = {c: [] for c in cols[:8]}
    is_train: list[np.ndarray] = []
    lens_all: list[np.ndarray] = []
    flat_items: list[np.ndarray] = []
    flat_cats: list[np.ndarray] = []
    offset = 0
    for batch in iter_table_batches(path, "ctr_samples", columns=cols):
        for c in parts:
            parts[c].append(batch.column(c).to_numpy(zero_copy_only=False))
        split = batch.column("split").to_numpy(zero_copy_only=False)
        bad = ~np.isin(split, ["train", "test"])
        if require_split and bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"split must be 'train' or 'test', got {split[row]!r}", file=str(path),
                            row=offset + row, column="split")
        is_train.append(split == "train")
        li, vi = _flatten(batch.column("hist_item_ids"))
        lc, vc = _flatten(batch.column("hist_category_ids"))
        if not np.array_equal(li, lc):
            row = int(np.flatnonzero(li != lc)[0])
            raise DataError(f"history has {li[row]} item ids but {lc[row]} category ids",
                            file=str(path), row=offset + row, column="hist_category_ids")
        lab = parts["label"][-1]
        if ((lab != 0) & (lab != 1)).any():
            row = int(np.flatnonzero((lab != 0) & (lab != 1))[0])
            raise DataError(f"label must be 0 or 1, got {lab[row]}", file=str(path),
                            row=offset + row, column="label")
        if (li > history_len).any():  # keep the most recent history_len clicks (most recent last)
            ends = np.cumsum(li)
            keep_len = np.minimum(li, history_len)
            starts = ends - keep_len
            idx = concat_ranges(starts, keep_len)
            vi, vc, li = vi[idx], vc[idx], keep_len
        lens_all.append(li)
        flat_items.append(vi.astype(np.int64))
        flat_cats.append(vc.astype(np.int32))
        offset += batch.num_rows
    if offset == 0:
        raise DataError("no rows", file=str(path))
    lens = np.concatenate(lens_all)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    cat = {c: np.concatenate(v) for c, v in parts.items()}
    return CtrSamples(
        ts=cat["ts"].astype(np.int64), user_id=cat["user_id"].astype(np.int64),
        item_id=cat["item_id"].astype(np.int64), request_id=cat["request_id"].astype(np.int64),
        position=cat["position"].astype(np.int16), region=cat["region"].astype(np.int16),
        category_id=cat["category_id"].astype(np.int32), label=cat["label"].astype(np.int8),
        is_train=np.concatenate(is_train), hist_offsets=offsets,
        hist_item_id=np.concatenate(flat_items), hist_category_id=np.concatenate(flat_cats),
        source=str(path))


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each (s, n), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    out = np.ones(total, np.int64)
    nz = lengths > 0
    s, e = starts[nz], ends[nz]
    out[0] = s[0]  # the first non-empty run (starts[0] is wrong when the first length is 0)
    # at the start of each run after the first, jump from the previous run's last value to its start
    prev_last = s[:-1] + (lengths[nz][:-1] - 1)
    out[e[:-1]] = s[1:] - prev_last
    return np.cumsum(out)


@dataclass
class Vocab:
    """Sorted raw ids -> dense index ``2 + rank`` (0 = padding, 1 = out of vocabulary)."""

    ids: np.ndarray  # (V,) int64, sorted unique

    @classmethod
    def fit(cls, *arrays: np.ndarray, min_count: int = 1) -> Vocab:
        """Ids occurring at least ``min_count`` times over ``arrays`` (rarer ones share OOV)."""
        ids, counts = np.unique(np.concatenate([np.asarray(a, np.int64) for a in arrays]),
                                return_counts=True)
        return cls(ids[counts >= min_count])

    @classmethod
    def of(cls, ids: np.ndarray) -> Vocab:
        """Every id given (e.g. the items that have a representation)."""
        return cls(np.unique(np.asarray(ids, np.int64)))

    def __len__(self) -> int:
        return len(self.ids) + 2

    def lookup(self, raw: np.ndarray) -> np.ndarray:
        """(n,) raw ids -> (n,) int64 indices; unknown ids -> OOV."""
        raw = np.asarray(raw, np.int64)
        if len(self.ids) == 0:
            return np.full(raw.shape, OOV, np.int64)
        pos = np.searchsorted(self.ids, raw)
        pos_c = np.minimum(pos, len(self.ids) - 1)
        found = self.ids[pos_c] == raw
        return np.where(found, pos_c + 2, OOV).astype(np.int64)


@dataclass
class FeatureSpace:
    """The vocabularies a model is trained with (saved beside its weights)."""

    items: Vocab            # ID vocabulary: items seen in training (as target or in a history)
    users: Vocab            # users seen in training
    n_categories: int       # category_id + 1 < n_categories (0 = padding)
    n_regions: int
    vec_items: Vocab | None = None  # items that have a representation (row i of the vector table)

    @classmethod
    def fit(cls, data: CtrSamples, vec_item_ids: np.ndarray | None = None,
            min_count: int = 1) -> FeatureSpace:
        """Vocabularies of the training split. Items and users seen fewer than ``min_count`` times
        there share the OOV row, which is thereby trained as "a rare item/user" (new items get it)."""
        tr = data.is_train
        row_of_hist = np.repeat(tr, data.hist_lengths())
        items = Vocab.fit(data.item_id[tr], data.hist_item_id[row_of_hist], min_count=min_count)
        users = Vocab.fit(data.user_id[tr], min_count=min_count)
        n_cat = int(max(data.category_id.max(initial=0), data.hist_category_id.max(initial=0))) + 2
        n_reg = int(data.region.max(initial=0)) + 2
        vec = Vocab.of(vec_item_ids) if vec_item_ids is not None else None
        return cls(items=items, users=users, n_categories=max(n_cat, 2), n_regions=max(n_reg, 2),
                   vec_items=vec)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"vocab.items": self.items.ids, "vocab.users": self.users.ids,
               "vocab.sizes": np.array([self.n_categories, self.n_regions], np.int64)}
        if self.vec_items is not None:
            out["vocab.vec_items"] = self.vec_items.ids
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureSpace:
        vec = arrays.get("vocab.vec_items")
        sizes = arrays["vocab.sizes"]
        return cls(items=Vocab(np.asarray(arrays["vocab.items"], np.int64)),
                   users=Vocab(np.asarray(arrays["vocab.users"], np.int64)),
                   n_categories=int(sizes[0]), n_regions=int(sizes[1]),
                   vec_items=Vocab(np.asarray(vec, np.int64)) if vec is not None else None)

    def encode(self, data: CtrSamples) -> EncodedSamples:
        """Map raw ids to indices, once for the whole data set."""
        n_cat, n_reg = self.n_categories, self.n_regions
        cat = np.clip(data.category_id.astype(np.int64) + 1, 0, n_cat - 1)
        hcat = np.clip(data.hist_category_id.astype(np.int64) + 1, 0, n_cat - 1).astype(np.int32)
        vec = self.vec_items
        return EncodedSamples(
            raw=data,
            item=self.items.lookup(data.item_id).astype(np.int32),
            user=self.users.lookup(data.user_id).astype(np.int32),
            category=cat.astype(np.int32),
            region=np.clip(data.region.astype(np.int64) + 1, 0, n_reg - 1).astype(np.int32),
            position=np.clip(data.position.astype(np.int64) + 1, 1, MAX_POSITION - 1).astype(np.int32),
            hist_item=self.items.lookup(data.hist_item_id).astype(np.int32),
            hist_category=hcat,
            item_v=vec.lookup(data.item_id).astype(np.int32) if vec is not None else None,
            hist_item_v=vec.lookup(data.hist_item_id).astype(np.int32) if vec is not None else None,
        )


@dataclass
class EncodedSamples:
    """Index arrays ready for batching (int32 in memory, int64 in each batch)."""

    raw: CtrSamples
    item: np.ndarray
    user: np.ndarray
    category: np.ndarray
    region: np.ndarray
    position: np.ndarray
    hist_item: np.ndarray       # (nnz,)
    hist_category: np.ndarray   # (nnz,)
    item_v: np.ndarray | None = None
    hist_item_v: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-row features, e.g. "simtier"

    def __len__(self) -> int:
        return len(self.item)

    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(self.raw.is_train)

    def test_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.raw.is_train)


def pad_rows(offsets: np.ndarray, flat: np.ndarray, rows: np.ndarray, history_len: int) -> np.ndarray:
    """CSR rows -> (B, history_len) int64, left-aligned, zero padded (keeps the last ``history_len``)."""
    ends = offsets[rows + 1]
    lens = np.minimum(ends - offsets[rows], history_len)
    starts = ends - lens
    pos = np.arange(history_len)
    valid = pos[None, :] < lens[:, None]
    idx = np.where(valid, starts[:, None] + pos[None, :], 0)
    out = flat[idx].astype(np.int64) if len(flat) else np.zeros(idx.shape, np.int64)
    out[~valid] = 0
    return out


def make_batch(enc: EncodedSamples, rows: np.ndarray, history_len: int = HISTORY_LEN) -> dict[str, torch.Tensor]:
    """One mini-batch as tensors.

    Returns ``item, user, category, region, position (B,)`` int64, ``label (B,)`` float32,
    ``hist_item, hist_category (B, L)`` int64, ``mask (B, L)`` bool, and when representations exist
    ``item_v (B,)``, ``hist_item_v (B, L)``; plus any per-row ``extra`` features ``(B, ...)``.
    """
    off = enc.raw.hist_offsets
    hist_item = pad_rows(off, enc.hist_item, rows, history_len)
    b: dict[str, torch.Tensor] = {
        "item": torch.from_numpy(enc.item[rows].astype(np.int64)),
        "user": torch.from_numpy(enc.user[rows].astype(np.int64)),
        "category": torch.from_numpy(enc.category[rows].astype(np.int64)),
        "region": torch.from_numpy(enc.region[rows].astype(np.int64)),
        "position": torch.from_numpy(enc.position[rows].astype(np.int64)),
        "label": torch.from_numpy(enc.raw.label[rows].astype(np.float32)),
        "hist_item": torch.from_numpy(hist_item),
        "hist_category": torch.from_numpy(pad_rows(off, enc.hist_category, rows, history_len)),
    }
    lens = np.minimum(np.diff(off)[rows], history_len)
    b["mask"] = torch.from_numpy(np.arange(history_len)[None, :] < lens[:, None])
    if enc.item_v is not None and enc.hist_item_v is not None:
        b["item_v"] = torch.from_numpy(enc.item_v[rows].astype(np.int64))
        b["hist_item_v"] = torch.from_numpy(pad_rows(off, enc.hist_item_v, rows, history_len))
    for k, v in enc.extra.items():
        b[k] = torch.from_numpy(np.ascontiguousarray(v[rows]))
    return b


def simtier_features(enc: EncodedSamples, vectors: torch.Tensor, n_tiers: int, history_len: int = HISTORY_LEN,
                     chunk: int = 16_384) -> np.ndarray:
    """SimTier counts (Eq. 2, Algorithm 1) of every row, once: the data-pipeline placement of SimTier
    (``CtrConfig.simtier_in = "pipeline"``). The representations are frozen, so the counts are a pure
    function of a row's target and its last ``history_len`` history items; batches then carry them as
    ``batch["simtier"]``. Computed with the model's own layer, so both placements give the same counts.

    Args:
        enc: encoded samples with representation indices (``item_v``, ``hist_item_v``).
        vectors: ``(V, D)`` representation table indexed by ``item_v`` (rows 0 and 1 zero).
        n_tiers: SimTier's N.

    Returns ``(len(enc), n_tiers)`` counts, uint8 (int32 when ``history_len`` > 255).
    """
    from mmrank.models.layers import SimTier

    if enc.item_v is None or enc.hist_item_v is None:
        raise ValueError("simtier_features: the samples carry no representation indices (encode them "
                         "with a FeatureSpace that has vec_items)")
    layer = SimTier(n_tiers)
    table = vectors.detach().float()
    off = enc.raw.hist_offsets
    out = np.zeros((len(enc), n_tiers), np.uint8 if history_len < 256 else np.int32)
    with torch.no_grad():
        for s in range(0, len(enc), chunk):
            rows = np.arange(s, min(s + chunk, len(enc)))
            ends = off[rows + 1]
            lens = np.minimum(ends - off[rows], history_len)                # the last history_len, as pad_rows
            pos = concat_ranges(ends - lens, lens)
            row_t = torch.from_numpy(np.repeat(np.arange(len(rows)), lens))
            hist = table.index_select(0, torch.from_numpy(enc.hist_item_v[pos].astype(np.int64)))
            target = table.index_select(0, torch.from_numpy(enc.item_v[rows].astype(np.int64)))
            out[rows] = layer.forward_packed(target, hist, row_t).numpy().astype(out.dtype)
    return out




def iter_batches(enc: EncodedSamples, rows: np.ndarray, batch_size: int, shuffle: bool = False,
                 seed: int = 0, history_len: int = HISTORY_LEN) -> Iterator[dict[str, torch.Tensor]]:
    """Mini-batches over ``rows`` (in order, or shuffled with ``seed``)."""
    rows = np.asarray(rows, np.int64)
    if shuffle:
        rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    for s in range(0, len(rows), batch_size):
        yield make_batch(enc, rows[s:s + batch_size], history_len)

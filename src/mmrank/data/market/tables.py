"""The public tables under ``R/data/``: what a shop would have logged, and the tables derived from it.

Implements the visible side of the market design (what is hidden goes to
:mod:`~mmrank.data.market.hidden`): items, users, events (impression, click, cart, purchase, with the
search query), query photos and the logged search candidates (with a stochastic production policy,
each one's propensity at the slot it was shown at and its probability of each position); then the train/test split in time
(*burn-in* requests feed histories only) and the derived pairs, CTR samples and lists
(:mod:`mmrank.data.samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrank.data.config import MarketConfig
from mmrank.data.io import write_table
from mmrank.data.market.catalog import Catalog
from mmrank.data.market.logs import Candidates, Slots
from mmrank.data.market.queries import QueryColumns
from mmrank.data.market.requests import Requests
from mmrank.data.market.world import DAY, World
from mmrank.data.samples import build_ctr_samples, build_lists, build_pairs
from mmrank.data.schemas import HISTORY_LEN


@dataclass
class TimeSplit:
    """Where the logs start (after the burn-in) and where test begins (the 80% quantile of logged
    requests' times); items created from a day before the split count as new."""

    start_ts: int
    split_ts: int
    logged: np.ndarray  # (n_requests,) bool: after the burn-in

    @property
    def new_item_ts(self) -> int:
        return self.split_ts - DAY


def time_split(cfg: MarketConfig, req: Requests) -> TimeSplit:
    """The market's train/test split in time."""
    start_ts = cfg.behaviour.burn_in_days * DAY
    logged = req.ts >= start_ts
    split_ts = int(np.quantile(req.ts[logged], 0.8)) if logged.any() else start_ts
    return TimeSplit(start_ts, split_ts, logged)


@dataclass
class Tables:
    """The tables written under ``R/data/`` (the manifest counts their rows)."""

    items: pa.Table
    users: pa.Table
    events: pa.Table
    candidates: pa.Table
    pairs: pa.Table
    samples: pa.Table
    lists: pa.Table
    noisy: pa.Table | None = None  # R/truth/noisy_pairs.parquet (only with a noisy-pair share)


def add_noisy_pairs(cfg: MarketConfig, cat: Catalog, pairs: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """Replace ``cfg.noisy_pair_share`` of the training pairs' items by an item of another article type
    (own stream of the seed; nothing drawn at share 0). Returns the pairs and the truth table
    (``pair_id`` = row of ``pairs.parquet``, ``sought_item_id``, ``logged_item_id``) or None."""
    if cfg.noisy_pair_share <= 0 or pairs.num_rows == 0:
        return pairs, None
    rng = np.random.default_rng([cfg.seed, 0x4E4F4953])
    train = np.asarray(pairs.column("split").to_pylist()) == "train"
    pick = np.flatnonzero(train & (rng.random(pairs.num_rows) < cfg.noisy_pair_share))
    pos = pairs.column("pos_item_id").to_numpy().copy()
    order = np.argsort(cat.item_ids, kind="stable")
    types = cat.attrs["article_type"]
    sought = pos[pick]
    rows = order[np.searchsorted(cat.item_ids[order], sought)]
    new = np.empty(len(pick), np.int64)
    for j, r in enumerate(rows):
        other = np.flatnonzero(types != types[r])
        new[j] = cat.item_ids[other[rng.integers(len(other))]] if len(other) else \
            cat.item_ids[(r + 1 + rng.integers(len(types) - 1)) % len(types)]
    pos[pick] = new
    i = pairs.column_names.index("pos_item_id")
    pairs = pairs.set_column(i, "pos_item_id", pa.array(pos, pa.int64()))
    truth = pa.table({"pair_id": pa.array(pick.astype(np.int64)), "sought_item_id": pa.array(sought),
                      "logged_item_id": pa.array(new)})
    return pairs, truth


def write_tables(data_dir: Path, cfg: MarketConfig, cat: Catalog, world: World, req: Requests,
                 slots: Slots, cands: Candidates, queries: QueryColumns, photos: list[bytes],
                 split: TimeSplit) -> Tables:
    """Write items, users, events, query photos, candidates, then pairs, CTR samples and lists."""
    items = items_table(cat, world.price, world.created)
    write_table(items, data_dir / "items.parquet", row_group_size=2048)
    users = pa.table({"user_id": pa.array(np.arange(cfg.n_users, dtype=np.int64)),
                      "region": pa.array(world.user_region)})
    write_table(users, data_dir / "users.parquet")
    events = events_table(cat, slots, req, queries)
    write_table(events, data_dir / "events.parquet")
    write_table(pa.table({"query_image": pa.array([queries.image[r] for r in queries.image_rows], pa.string()),
                          "image": pa.array(photos, pa.binary())}), data_dir / "query_images.parquet",
                row_group_size=2048)
    cols = {"request_id": pa.array(cands.req), "item_id": pa.array(cat.item_ids[cands.item]),
            "prod_score": pa.array(cands.score)}
    if cands.propensity is not None:  # a stochastic production policy logs its propensities
        k = cands.marginal.shape[1]
        cols["propensity"] = pa.array(cands.propensity, pa.float32(), mask=np.isnan(cands.propensity))
        cols["position_probs"] = pa.FixedSizeListArray.from_arrays(
            pa.array(cands.marginal.ravel().astype(np.float32)), k)
    candidates = pa.table(cols)
    write_table(candidates, data_dir / "candidates.parquet")

    pairs, noisy = add_noisy_pairs(cfg, cat, build_pairs(events, split.split_ts, split.start_ts))
    write_table(pairs, data_dir / "pairs.parquet")
    samples = build_ctr_samples(events, items, split.split_ts, HISTORY_LEN, split.start_ts)
    write_table(samples, data_dir / "ctr_samples.parquet")
    lists = build_lists(events, items, split.split_ts, split.start_ts, candidates, HISTORY_LEN)
    write_table(lists, data_dir / "lists.parquet")
    return Tables(items, users, events, candidates, pairs, samples, lists, noisy)


def items_table(cat: Catalog, price: np.ndarray, created: np.ndarray) -> pa.Table:
    """The catalog with its simulated prices and arrival times (a real catalog keeps its own columns)."""
    from mmrank.data.photos import placeholder_image

    n = len(cat.item_ids)
    has_image = cat.has_image if cat.has_image is not None else np.ones(n, bool)
    has_title = cat.has_title if cat.has_title is not None else np.ones(n, bool)
    grey = placeholder_image()
    cols: dict[str, pa.Array] = {
        "item_id": pa.array(cat.item_ids, pa.int64()),
        "title": pa.array([t if h else "" for t, h in zip(cat.titles, has_title)], pa.string()),
        "image": pa.array([b if h else grey for b, h in zip(cat.images, has_image)], pa.binary()),
        "category": pa.array([cat.vocab["article_type"][c] for c in cat.attrs["article_type"]],
                             pa.string()),
        "price": pa.array(price, pa.float64()),
        "created_at": pa.array(created, pa.int64()),
    }
    if not cat.extra_columns:
        for name, vocab in cat.vocab.items():
            cols[name] = pa.array([vocab[c] for c in cat.attrs[name]], pa.string())
    else:
        for name, arr in cat.extra_columns.items():
            cols[name] = arr
    # appended last, so the columns before them keep their place (issue 20)
    cols["has_image"] = pa.array(has_image, pa.bool_())
    cols["has_title"] = pa.array(has_title, pa.bool_())
    return pa.table(cols)


def events_table(cat: Catalog, slots: Slots, req: Requests, queries: QueryColumns) -> pa.Table:
    """One impression per shown slot, and a click, cart and purchase event where they happened."""
    parts = []
    for code, mask in enumerate([np.ones_like(slots.click), slots.click, slots.cart, slots.buy]):
        parts.append((slots.req[mask], slots.pos[mask], slots.item[mask],
                      np.full(int(mask.sum()), code, np.int8)))
    r = np.concatenate([p[0] for p in parts])
    p = np.concatenate([p[1] for p in parts])
    it = np.concatenate([p_[2] for p_ in parts])
    ev = np.concatenate([p_[3] for p_ in parts])
    order = np.lexsort((ev, p, r))  # by request, position, then funnel step
    r, p, it, ev = r[order], p[order], it[order], ev[order]
    names = pa.array(["impression", "click", "cart", "purchase"])
    take = pa.array(r)
    surface = np.where(req.search, "search", "display")
    return pa.table({
        "ts": pa.array(req.ts[r]), "user_id": pa.array(req.user[r]),
        "item_id": pa.array(cat.item_ids[it]), "request_id": pa.array(r),
        "position": pa.array(p), "event": names.take(pa.array(ev)),
        "query_text": pa.array(queries.text, pa.string()).take(take),
        "query_image": pa.array(queries.image, pa.string()).take(take),
        "region": pa.array(req.region[r].astype(np.int16)),
        "surface": pa.array(surface[r]),
    })

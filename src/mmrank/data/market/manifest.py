"""``R/data/manifest.json``: what the market is (simulated, from which source and config), how big, and
what a model could reach on it.

Implements the market design's account of itself: the counts of every table, the per-surface
statistics (:mod:`~mmrank.data.market.stats`), the calibration record, the time split and the attribute
vocabularies, so that a reader of the run knows the data without reading ``R/truth/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrank.data.config import MarketConfig
from mmrank.data.market.catalog import CATALOG_ATTRIBUTES, Catalog
from mmrank.data.market.logs import Slots
from mmrank.data.market.requests import Requests
from mmrank.data.market.tables import Tables, TimeSplit
from mmrank.data.market.world import horizon
from mmrank.data.schemas import HISTORY_LEN


def market_manifest(cfg: MarketConfig, cat: Catalog, req: Requests, slots: Slots, tables: Tables,
                    n_photos: int, split: TimeSplit, surfaces: dict[str, Any],
                    calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest of a generated market (``surfaces`` from :func:`~mmrank.data.market.stats.surface_stats`)."""
    display = surfaces["display"]
    logged_slot = req.ts[slots.req] >= split.start_ts  # after the burn-in
    return {
        "simulated": True,
        "source": (f"real catalog {cfg.catalog} (photos, titles, attributes real; users, prices, "
                   f"arrival times and behaviour simulated)") if cfg.catalog
        else "synthetic market (items, photos, titles, users and behaviour all simulated)",
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "counts": {"items": tables.items.num_rows, "users": tables.users.num_rows,
                   "requests": int(len(req.ts)), "logged_requests": int(split.logged.sum()),
                   "impressions": int(logged_slot.sum()), "clicks": int(slots.click[logged_slot].sum()),
                   "carts": int(slots.cart[logged_slot].sum()),
                   "purchases": int(slots.buy[logged_slot].sum()),
                   "simulated_impressions": int(len(slots.req)),
                   "events": tables.events.num_rows, "pairs": tables.pairs.num_rows, "query_images": n_photos,
                   "ctr_samples": tables.samples.num_rows, "lists": tables.lists.num_rows,
                   "candidates": tables.candidates.num_rows},
        "surfaces": surfaces,
        "calibration": calibration,
        "ctr": display["rates"]["click"],
        "oracle_auc": display["oracle_auc"],
        "oracle_auc_test": display["oracle_auc_test"],
        "attainable_auc": display["attainable_auc"],
        "start_ts": int(split.start_ts),
        "split_ts": split.split_ts,
        "new_item_ts": split.new_item_ts,
        "horizon_ts": int(horizon(cfg)),
        "history_len": HISTORY_LEN,
        "attributes": {name: vocab for name, vocab in cat.vocab.items()},
        "attribute_columns": (CATALOG_ATTRIBUTES if cfg.catalog
                              else {n: n for n in cat.vocab}),
    }


def write_manifest(data_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (sorted keys: the same market gives the same bytes)."""
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))

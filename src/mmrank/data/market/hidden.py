"""The ground truth under ``R/truth/``: everything hidden, for the evaluator and eval code (never for a
training stage).

Implements the hidden side of the market design: each item's content vector, appeals, popularity and
home region; the synthetic look or a real photo's statistics; each request's hidden state (engagement,
price sensitivity, the region's position decay and outside option, list length, the search target);
each shown slot's true probabilities; each search candidate's utilities (what
:class:`mmrank.data.truth.Evaluator` needs to score another order); and the behaviour settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrank.data.config import MarketConfig
from mmrank.data import render
from mmrank.data.io import write_table
from mmrank.data.market.catalog import Catalog
from mmrank.data.market.logs import Candidates, Slots
from mmrank.data.market.queries import Intents
from mmrank.data.market.requests import Requests
from mmrank.data.market.world import World, per_region


def write_truth(truth_dir: Path, cfg: MarketConfig, cat: Catalog, world: World, req: Requests,
                slots: Slots, cands: Candidates, intents: Intents) -> None:
    """Write items, latent (synthetic only), continuous, requests, slots, candidates and behaviour.json."""
    b = cfg.behaviour
    d = world.content.shape[1]
    write_table(pa.table({
        "item_id": pa.array(cat.item_ids),
        "content": pa.FixedSizeListArray.from_arrays(pa.array(world.content.ravel().astype(np.float32)), d),
        "visible_appeal": pa.array(world.visible), "hidden_appeal": pa.array(world.hidden),
        "popularity": pa.array(world.pop), "home_region": pa.array(world.home),
        "log_price": pa.array(np.log(world.price)),
    }), truth_dir / "items.parquet")
    if cat.latent is not None:
        write_table(pa.table({"item_id": pa.array(cat.item_ids),
                              **{f"latent_{n}": pa.array(cat.latent[:, j])
                                 for j, n in enumerate(render.LATENT_NAMES)}}),
                    truth_dir / "latent.parquet")
    write_table(pa.table({"item_id": pa.array(cat.item_ids),
                          **{f"continuous_{j}": pa.array(cat.continuous[:, j])
                             for j in range(cat.continuous.shape[1])}}),
                truth_dir / "continuous.parquet")
    s_idx = np.flatnonzero(req.search)
    region = req.region.astype(np.int64)
    target = np.full(len(req.ts), -1, np.int64)
    target[s_idx] = cat.item_ids[intents.target]
    image = np.zeros(len(req.ts), bool)
    image[s_idx] = intents.has_photo
    write_table(pa.table({
        "request_id": pa.array(np.arange(len(req.ts), dtype=np.int64)),
        "surface": pa.array(np.where(req.search, "search", "display")),
        "region": pa.array(req.region), "user_id": pa.array(req.user),
        "engagement": pa.array(req.engagement),
        "sensitivity": pa.array(world.sens[req.user]),
        "position_decay": pa.array(per_region(b.region_position_decay, cfg.n_regions)[region]),
        "outside_option": pa.array(per_region(b.region_outside_option, cfg.n_regions)[region]),
        "n_shown": pa.array(np.where(req.search, per_region(b.region_shown, cfg.n_regions)[region],
                                     b.display_slots).astype(np.int16)),
        "target_item_id": pa.array(target), "photo_query": pa.array(image),
    }), truth_dir / "requests.parquet")
    p = slots.p
    write_table(pa.table({
        "request_id": pa.array(slots.req), "position": pa.array(slots.pos),
        "item_id": pa.array(cat.item_ids[slots.item]),
        "p_click": pa.array(p[:, 0]), "p_cart": pa.array(p[:, 1]), "p_purchase": pa.array(p[:, 2]),
        "p_click_attainable": pa.array(p[:, 3]), "content_logit": pa.array(slots.content),
    }), truth_dir / "slots.parquet")
    write_table(pa.table({
        "request_id": pa.array(cands.req), "item_id": pa.array(cat.item_ids[cands.item]),
        "base_click": pa.array(cands.base[:, 0]), "base_cart": pa.array(cands.base[:, 1]),
        "base_buy": pa.array(cands.base[:, 2]),
    }), truth_dir / "candidates.parquet")
    (truth_dir / "behaviour.json").write_text(json.dumps(b.model_dump(mode="json"), indent=2))

"""The market's statistics per surface, for the manifest: what a model could reach, and how the logs look.

Implements the market design's yardsticks: the oracle AUC (the true click probability as a score), the
attainable AUC (with the request's hidden engagement integrated out), funnel rates, history lengths,
exposure concentration, and how much of the content part of the click logit the categorical columns
alone explain (*content beyond columns*).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmrank.data.config import MarketConfig
from mmrank.data.market.catalog import Catalog
from mmrank.data.market.logs import Slots
from mmrank.data.market.requests import Requests
from mmrank.data.market.tastes import taste
from mmrank.data.market.world import World, horizon, per_region
from mmrank.eval import auc


def surface_stats(cfg: MarketConfig, cat: Catalog, world: World, req: Requests, slots: Slots,
                  start_ts: int, split_ts: int) -> dict[str, Any]:
    """surface -> its logged impressions' statistics (surfaces with no logged impression left out)."""
    out: dict[str, Any] = {}
    search_req = req.search[slots.req]
    logged = req.ts[slots.req] >= start_ts
    for name, sel in (("display", ~search_req & logged), ("search", search_req & logged)):
        clicked = slots.click[sel]
        if not sel.any():
            continue
        p = slots.p[sel]
        test = req.ts[slots.req[sel]] >= split_ts
        imp_counts = np.bincount(slots.item[sel], minlength=len(cat.item_ids))
        top = np.argsort(-imp_counts, kind="stable")[: max(1, len(imp_counts) // 100)]
        lens = prior_clicks(req, slots, sel)
        out[name] = {
            "impressions": int(sel.sum()),
            "requests": int(len(np.unique(slots.req[sel]))),
            "oracle_auc": round(float(auc(clicked.astype(np.int8), p[:, 0])), 4),
            "oracle_auc_test": round(float(auc(clicked[test].astype(np.int8), p[test, 0])), 4)
            if test.any() and clicked[test].any() else None,
            "attainable_auc": round(float(auc(clicked.astype(np.int8), p[:, 3])), 4),
            "rates": {"click": round(float(clicked.mean()), 4),
                      "cart_per_click": round(float(slots.cart[sel].sum() / max(clicked.sum(), 1)), 4),
                      "purchase_per_cart": round(float(slots.buy[sel].sum()
                                                       / max(slots.cart[sel].sum(), 1)), 4),
                      "purchase_per_impression": round(float(slots.buy[sel].mean()), 5)},
            "history_len": {"median": float(np.median(lens)), "p90": float(np.quantile(lens, 0.9)),
                            "share_empty": round(float((lens == 0).mean()), 4)},
            "top1pct_share": round(float(imp_counts[top].sum() / max(imp_counts.sum(), 1)), 4),
            "columns_r2": round(columns_r2(cfg, cat, world, req, slots, sel), 4),
        }
    return out


def prior_clicks(req: Requests, slots: Slots, sel: np.ndarray) -> np.ndarray:
    """Number of the user's clicks strictly before each selected impression (uncapped)."""
    c = slots.click
    c_user, c_ts = slots.user[c], req.ts[slots.req[c]]
    key = np.sort(c_user.astype(np.int64) << 32 | c_ts)
    u, t = slots.user[sel].astype(np.int64), req.ts[slots.req[sel]]
    return np.searchsorted(key, u << 32 | t, side="left") - np.searchsorted(key, u << 32, side="left")


def columns_r2(cfg: MarketConfig, cat: Catalog, world: World, req: Requests, slots: Slots,
               sel: np.ndarray, n: int = 20_000, others: int = 8) -> float:
    """Share of the content part of the click logit that the categorical columns alone explain.

    For a sample of impressions, the columns' best guess of the content part (the user's taste plus
    the visible appeal) is its mean over other items of the same column values (the same cell), for
    the same user at the same time; R^2 = 1 - SSE / SST of that guess.
    """
    rng = np.random.default_rng(cfg.seed + 17)
    idx = np.flatnonzero(sel)
    idx = rng.choice(idx, size=min(n, len(idx)), replace=False)
    cell = np.zeros(len(cat.item_ids), np.int64)
    for name in sorted(cat.attrs):
        cell = cell * (int(cat.attrs[name].max()) + 1) + cat.attrs[name]
    order = np.argsort(cell, kind="stable")
    srt = cell[order]
    item = slots.item[idx]
    lo = np.searchsorted(srt, cell[item], side="left")
    hi = np.searchsorted(srt, cell[item], side="right")
    size = hi - lo
    ok = size > 1
    idx, item, lo, size = idx[ok], item[ok], lo[ok], size[ok]
    pick = order[lo[:, None] + (rng.random((len(idx), others)) * size[:, None]).astype(np.int64)]
    pick = np.where(pick == item[:, None], -1, pick)  # leave the item itself out
    b = cfg.behaviour
    r = req.region[slots.req[idx]].astype(np.int64)
    users = slots.user[idx]
    frac = req.ts[slots.req[idx]] / horizon(cfg)
    guess = taste(world, b, users, frac, np.maximum(pick, 0),
                  per_region(b.region_photo_weight, cfg.n_regions)[r],
                  per_region(b.region_title_weight, cfg.n_regions)[r]) + world.visible[np.maximum(pick, 0)]
    valid = pick >= 0
    has = valid.any(axis=1)
    guess = np.where(valid, guess, 0.0).sum(axis=1)[has] / valid.sum(axis=1)[has]
    actual = slots.content[idx][has]
    if len(actual) < 2:
        return float("nan")
    return float(1.0 - np.sum((actual - guess) ** 2) / np.sum((actual - actual.mean()) ** 2))

"""The display surface: a query-free feed per request, the CTR task's logs.

Implements the display half of the market design's *two surfaces*: candidates from popularity and from
look-alikes of the user's recent clicks, ordered by a production score that knows popularity and
(noisily) the hidden appeal; the top ``display_slots`` are shown, and each slot is clicked, carted and
bought on its own (no list effects), with the region's position decay, the user's price sensitivity
and the request's hidden engagement.
"""

from __future__ import annotations

import numpy as np

from mmrank.data.behaviour import examination, sigmoid
from mmrank.data.market.logs import clicks_of
from mmrank.data.market.retrieval import dedupe_rows, top_by
from mmrank.data.market.state import SimState
from mmrank.data.market.tastes import RECENT, revisit, taste
from mmrank.data.market.world import DAY


def marginal_sigmoid(u: np.ndarray, std: float, n: int = 16) -> np.ndarray:
    """E[sigmoid(u + e)] over e ~ N(0, std^2), by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    return sum(wi * sigmoid(u + std * xi) for xi, wi in zip(x, w))


def display_chunk(sim: SimState, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Show, and draw the outcomes of, the display requests ``rows``; returns their clicks."""
    cfg, world, req, rng, recent = sim.cfg, sim.world, sim.req, sim.rng, sim.recent
    decay, photo_w, title_w, outside, horizon = sim.decay, sim.photo_w, sim.title_w, sim.outside, sim.horizon
    b = cfg.behaviour
    n, k = len(rows), b.display_slots
    region = req.region[rows].astype(np.int64)
    users = req.user[rows]
    rec = recent.items[users]
    popular = sim.by_region.draw(region, sim.live_region[rows], 2 * k, rng)
    seed_slot = rng.integers(RECENT, size=(n, k))
    seeds = np.take_along_axis(rec, seed_slot, axis=1)
    look = sim.neighbours[np.maximum(seeds, 0), rng.integers(sim.neighbours.shape[1], size=(n, k))]
    ok = (seeds >= 0) & (world.created[look] <= req.ts[rows][:, None]) & world.available[look, region[:, None]]
    look = np.where(ok, look, -1)
    cands = dedupe_rows(np.concatenate([look[:, : k // 2], popular], axis=1), 2 * k)
    safe = np.maximum(cands, 0)
    prod = 0.5 * np.log(world.pop[safe]) + 0.4 * world.hidden[safe] + 0.6 * np.isin(cands, look) \
        + rng.normal(0, 0.5, size=cands.shape)
    shown, _ = top_by(prod, cands, k)
    mask = shown >= 0
    item = np.maximum(shown, 0)
    frac = req.ts[rows] / horizon
    r = region
    tst = taste(world, b, users, frac, item, photo_w[r], title_w[r])
    content_part = tst + world.visible[item]
    fresh = np.exp(-np.maximum(req.ts[rows][:, None] - world.created[item], 0) / (3 * DAY))
    s = world.sens[users][:, None]
    u = b.display_intercept + content_part + world.hidden[item] + b.revisit_weight * revisit(world, rec, item) \
        - 0.5 * s * world.price_z[item] + 0.3 * fresh
    exam = examination(np.broadcast_to(np.arange(k), (n, k)), decay[r])
    eps = req.engagement[rows][:, None]
    p_click = exam * sigmoid(u + eps)
    p_click_att = exam * marginal_sigmoid(u, b.engagement_std)
    c = b.cart_intercept + 0.4 * (world.visible[item] + world.hidden[item]) + 0.3 * tst - 0.6 * s * world.price_z[item]
    v = b.display_buy_intercept + 0.5 * (world.visible[item] + world.hidden[item]) - 0.6 * s * world.price_z[item] \
        - outside[r][:, None]
    clicked = mask & (rng.random((n, k)) < p_click)
    carted = clicked & (rng.random((n, k)) < sigmoid(c))
    bought = carted & (rng.random((n, k)) < sigmoid(v))
    p = np.stack([p_click, p_click * sigmoid(c), p_click * sigmoid(c) * sigmoid(v), p_click_att], axis=-1)
    sim.log.add_slots(rows, shown, mask, clicked, carted, bought, p, content_part, users)
    return clicks_of(req, rows, shown, clicked)

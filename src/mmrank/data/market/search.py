"""The search surface: a ranked list per search request, the pre-training pairs' and re-ranking lists' logs.

Implements the search half of the market design's *two surfaces*: about ``search_candidates`` items
retrieved for the query (of the target's type, and of any type), ordered by a logged production score
(query match, popularity, noisy hidden appeal); the region's first ``region_shown`` are shown and the
outcomes follow :mod:`mmrank.data.behaviour` with its list effects (price comparison, substitution,
one purchase among the carted items).
"""

from __future__ import annotations

import numpy as np

from mmrank.data.behaviour import ListInputs, draw_outcomes, examination, list_probabilities, sigmoid
from mmrank.data.market.logs import clicks_of
from mmrank.data.market.queries import match
from mmrank.data.market.retrieval import dedupe_rows, top_by
from mmrank.data.market.state import SimState
from mmrank.data.market.tastes import revisit, taste


def marginal_click(x: ListInputs, std: float, n: int = 16) -> np.ndarray:
    """P(click) with the request's hidden engagement integrated out (what no model input carries)."""
    nodes, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    u, _, _ = x.utilities()
    u = u - x.engagement[:, None]
    pos = np.broadcast_to(np.arange(u.shape[1]), u.shape)
    exam = examination(pos, x.decay)
    return np.where(x.mask, exam * sum(wi * sigmoid(u + std * xi) for xi, wi in zip(nodes, w)), 0.0)


def search_chunk(sim: SimState, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Retrieve, order and show the lists of the search requests ``rows``; returns their clicks."""
    cfg, cat, world, req, rng, recent, log = sim.cfg, sim.cat, sim.world, sim.req, sim.rng, sim.recent, sim.log
    intents, decay, outside, horizon = sim.intents, sim.decay, sim.outside, sim.horizon
    b = cfg.behaviour
    n_c = b.search_candidates
    region = req.region[rows].astype(np.int64)
    users = req.user[rows]
    q = intents.row[rows]
    target = intents.target[q]
    n_types = len(cat.vocab["article_type"])
    typed = sim.by_type.draw(region * n_types + cat.attrs["article_type"][target], intents.live_type[q],
                             2 * n_c, rng)
    anyt = sim.by_region.draw(region, sim.live_region[rows], n_c, rng)
    cands = dedupe_rows(np.concatenate([typed, anyt], axis=1), 3 * n_c)
    safe = np.maximum(cands, 0)
    fit = match(cat, world, intents, q, safe)
    retrieval = fit + 0.3 * np.log(world.pop[safe]) + 0.7 * rng.gumbel(size=cands.shape)
    cands, _ = top_by(retrieval, cands, n_c)
    safe = np.maximum(cands, 0)
    fit = match(cat, world, intents, q, safe)
    prod = fit + 0.35 * np.log(world.pop[safe]) + 0.3 * world.hidden[safe] + rng.normal(0, 0.4, size=cands.shape)
    cands, prod = top_by(prod, cands, n_c)
    safe = np.maximum(cands, 0)
    fit = match(cat, world, intents, q, safe)
    frac = req.ts[rows] / horizon
    tst = taste(world, b, users, frac, safe, sim.photo_w[region], sim.title_w[region])
    appeal = world.visible[safe] + world.hidden[safe]
    rec = revisit(world, recent.items[users], safe)
    base_u = b.search_intercept + b.query_match_weight * fit + tst + appeal + b.revisit_weight * rec
    base_c = b.cart_intercept + 0.25 * fit + 0.4 * appeal + 0.3 * tst
    base_v = b.buy_intercept + 0.5 * appeal + 0.3 * tst + 0.3 * fit
    k = int(sim.shown_n.max())
    n_shown = sim.shown_n[region]
    mask = (cands[:, :k] >= 0) & (np.arange(k)[None, :] < n_shown[:, None])
    x = ListInputs(base_u[:, :k], base_c[:, :k], base_v[:, :k], np.log(world.price[safe[:, :k]]),
                   world.content[safe[:, :k]], mask, world.sens[users], decay[region], outside[region],
                   req.engagement[rows], b.substitution)
    out = draw_outcomes(x, rng)
    probs = list_probabilities(x)
    att = marginal_click(x, b.engagement_std)
    p = np.stack([probs["click"], probs["cart"], probs["purchase"], att], axis=-1)
    shown = np.where(mask, cands[:, :k], -1)
    log.add_slots(rows, shown, mask, out["click"], out["cart"], out["purchase"], p,
                  tst[:, :k] + world.visible[safe[:, :k]], users)
    valid = cands >= 0
    log.cand_req.append(np.repeat(rows, valid.sum(axis=1)))
    log.cand_item.append(cands[valid])
    log.cand_score.append(prod[valid].astype(np.float32))
    log.cand_base.append(np.stack([base_u[valid], base_c[valid], base_v[valid]], axis=1))
    return clicks_of(req, rows, shown, out["click"])

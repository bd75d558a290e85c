"""The search surface: a ranked list per search request, the pre-training pairs' and re-ranking lists' logs.

Implements the search half of the market design's *two surfaces*: about ``search_candidates`` items
retrieved for the query (of the target's type, and of any type), ordered by a logged production score
(query match, popularity, noisy hidden appeal); the region's first ``region_shown`` are shown (or, with a
stochastic production policy, ``region_shown`` drawn as :mod:`~mmrank.data.market.policy` says, with
their propensities logged) and the
outcomes follow :mod:`mmrank.data.behaviour` with its list effects (price comparison, substitution,
one purchase among the carted items).
"""

from __future__ import annotations

import numpy as np

from mmrank.data.behaviour import ListInputs, draw_outcomes, examination, list_probabilities, sigmoid
from mmrank.data.market.logs import clicks_of
from mmrank.data.market.policy import draw_lists
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
    k = int(sim.shown_n.max())
    n_shown = sim.shown_n[region]
    draw = None
    if b.stochastic_policy:  # else the first n_shown by production score, drawing nothing
        draw = draw_lists(prod, cands >= 0, n_shown, k, b.policy_temperature, b.policy_exploration,
                          b.policy_marginal_samples, rng)
    safe = np.maximum(cands, 0)
    fit = match(cat, world, intents, q, safe)
    frac = req.ts[rows] / horizon
    tst = taste(world, b, users, frac, safe, sim.photo_w[region], sim.title_w[region])
    appeal = world.visible[safe] + world.hidden[safe]
    rec = revisit(world, recent.items[users], safe)
    base_u = b.search_intercept + b.query_match_weight * fit + tst + appeal + b.revisit_weight * rec
    base_c = b.cart_intercept + 0.25 * fit + 0.4 * appeal + 0.3 * tst
    base_v = b.buy_intercept + 0.5 * appeal + 0.3 * tst + 0.3 * fit
    if draw is None:
        def sh(a: np.ndarray) -> np.ndarray:
            return a[:, :k]
    else:
        col = np.maximum(draw.order, 0)

        def sh(a: np.ndarray) -> np.ndarray:
            return np.take_along_axis(a, col, axis=1)
    shown_c = np.where(draw.order >= 0, sh(cands), -1) if draw is not None else cands[:, :k]
    mask = (shown_c >= 0) & (np.arange(k)[None, :] < n_shown[:, None])
    x = ListInputs(sh(base_u), sh(base_c), sh(base_v), np.log(world.price[sh(safe)]),
                   world.content[sh(safe)], mask, world.sens[users], decay[region], outside[region],
                   req.engagement[rows], b.substitution)
    out = draw_outcomes(x, rng)
    probs = list_probabilities(x)
    att = marginal_click(x, b.engagement_std)
    p = np.stack([probs["click"], probs["cart"], probs["purchase"], att], axis=-1)
    shown = np.where(mask, shown_c, -1)
    log.add_slots(rows, shown, mask, out["click"], out["cart"], out["purchase"], p,
                  sh(tst) + world.visible[sh(safe)], users)
    valid = cands >= 0
    if draw is not None:
        prop = np.full(cands.shape, np.nan)  # each candidate's q at the slot it was shown at
        r, j = np.nonzero(mask)
        prop[r, draw.order[r, j]] = draw.propensity[r, j]
        log.cand_prop.append(prop[valid].astype(np.float32))
        log.cand_marg.append(draw.marginal[valid].astype(np.float32))
        log.marg_se.append(draw.marginal_se[valid])
    log.cand_req.append(np.repeat(rows, valid.sum(axis=1)))
    log.cand_item.append(cands[valid])
    log.cand_score.append(prod[valid].astype(np.float32))
    log.cand_base.append(np.stack([base_u[valid], base_c[valid], base_v[valid]], axis=1))
    return clicks_of(req, rows, shown, out["click"])

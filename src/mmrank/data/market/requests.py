"""Who visits when, on which surface: the requests of the whole horizon, burn-in included.

Implements the market design's *two surfaces* (a share of the impressions on display feeds, the rest
on search lists of a region's length) and *burn-in* (requests are drawn over the burn-in days too), with
users drawn by their activity and a hidden engagement per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrank.data.config import MarketConfig
from mmrank.data.market.world import DAY, World, horizon, per_region


@dataclass
class Requests:
    """One row per request, in time order (row i = request id i)."""

    ts: np.ndarray
    user: np.ndarray
    region: np.ndarray
    search: np.ndarray       # bool: search (else display)
    engagement: np.ndarray   # hidden per-request mood


def draw_requests(cfg: MarketConfig, world: World, rng: np.random.Generator) -> Requests:
    """Enough requests for ``cfg.n_impressions`` logged impressions, spread uniformly over the horizon."""
    b = cfg.behaviour
    total = cfg.n_impressions * horizon(cfg) / (cfg.n_days * DAY)
    shares = per_region(b.region_shares, cfg.n_regions)
    mean_shown = float(np.dot(shares / shares.sum(), per_region(b.region_shown, cfg.n_regions)))
    n_disp = int(round(total * b.display_share / b.display_slots))
    n_search = int(round(total * (1 - b.display_share) / mean_shown))
    n = max(2, n_disp + n_search)
    ts = np.sort(rng.integers(0, horizon(cfg), size=n)).astype(np.int64)
    search = rng.permutation(np.r_[np.zeros(n - n_search, bool), np.ones(n_search, bool)])
    user = rng.choice(cfg.n_users, size=n, p=world.activity).astype(np.int64)
    return Requests(ts, user, world.user_region[user], search,
                    rng.normal(0.0, b.engagement_std, size=n))

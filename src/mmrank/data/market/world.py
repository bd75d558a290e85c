"""The hidden world: what is true about items and users and never shown to a model (``R/truth/``).

Implements the market design's *content beyond columns* (each item's content vector, an appeal that
its content shows and one only behaviour reveals), long-tailed exposure, prices against the item
type's typical price, arrival times, *regions that differ in kind* (uneven sizes, a partly regional
assortment, regional taste centres and price sensitivity) and users' drifting interest centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrank.data.config import MarketConfig
from mmrank.data.content import content_scale, content_space, standardise
from mmrank.data.market.catalog import Catalog

DAY = 86_400


def horizon(cfg: MarketConfig) -> int:
    """The simulated time span in seconds: the burn-in days, then the logged days."""
    return (cfg.behaviour.burn_in_days + cfg.n_days) * DAY


def per_region(values: list, n_regions: int) -> np.ndarray:
    """One value per region: ``values`` in order, its last value repeated for the regions beyond it."""
    return np.array([values[min(r, len(values) - 1)] for r in range(n_regions)])


@dataclass
class World:
    """Everything hidden about items and users (written under ``R/truth/``)."""

    content: np.ndarray      # (I, D) content vectors (standardised, scaled by content_scale(D))
    from_photo: np.ndarray   # (D,) bool: dimensions photos show (else titles name them)
    visible: np.ndarray      # (I,) appeal the content shows
    hidden: np.ndarray       # (I,) appeal only behaviour reveals
    pop: np.ndarray          # (I,) production exposure weight (long-tailed)
    price: np.ndarray        # (I,)
    price_z: np.ndarray      # (I,) log price against the item type's typical price
    created: np.ndarray      # (I,)
    home: np.ndarray         # (I,) home region
    available: np.ndarray    # (I, R) bool: sold in region r
    user_region: np.ndarray  # (U,)
    activity: np.ndarray     # (U,) probability of each user being the visitor
    centres0: np.ndarray     # (U, K, D) interest centres at t = 0
    centres1: np.ndarray     # (U, K, D) at the end (drift)
    n_centres: np.ndarray    # (U,)
    sens: np.ndarray         # (U,) price sensitivity


def build_world(cfg: MarketConfig, cat: Catalog, rng: np.random.Generator) -> World:
    """Draw the hidden world of the catalog ``cat`` and ``cfg.n_users`` users."""
    b = cfg.behaviour
    n_items, n_users, n_regions = len(cat.item_ids), cfg.n_users, cfg.n_regions
    # The columns' share of the content space: type, pattern and style (the colour is in the photo's
    # part); on a real catalog, article type, usage and sub-category.
    dims = {"article_type": 2, "pattern": 1, "style": 1}
    content, from_photo = content_space(cat.continuous, cat.attrs, dims, rng)
    d = content.shape[1]
    direction = rng.normal(size=d)
    visible = b.visible_appeal_std * standardise(content @ direction[:, None])[:, 0]
    hidden = rng.normal(0.0, b.hidden_appeal_std, size=n_items)
    # Exposure: better items tend to be more popular; a Zipf law over the resulting ranks.
    order = np.argsort(-(visible + hidden + rng.gumbel(size=n_items)), kind="stable")
    ranks = np.empty(n_items)
    ranks[order] = np.arange(1, n_items + 1)
    pop = 1.0 / ranks ** cfg.zipf_exponent

    band = rng.integers(0, 5, size=n_items)
    type_codes = cat.attrs["article_type"]
    type_level = rng.uniform(2.5, 4.5, size=len(cat.vocab["article_type"]))
    log_p = type_level[type_codes] + 0.35 * band + 0.1 * visible + rng.normal(0, 0.15, size=n_items)
    price = np.round(np.exp(log_p), 2)
    log_p = np.log(price)
    type_mean = np.bincount(type_codes, weights=log_p) / np.maximum(np.bincount(type_codes), 1)
    price_z = (log_p - type_mean[type_codes]) / 0.4

    created = np.where(rng.random(n_items) < cfg.initial_item_share, 0,
                       rng.integers(1, horizon(cfg), size=n_items)).astype(np.int64)
    shares = per_region(b.region_shares, n_regions).astype(np.float64)
    shares /= shares.sum()
    home = rng.choice(n_regions, size=n_items, p=shares).astype(np.int16)
    regional = rng.random(n_items) < b.regional_assortment
    available = np.where(regional[:, None], np.arange(n_regions)[None, :] == home[:, None], True)

    user_region = rng.choice(n_regions, size=n_users, p=shares).astype(np.int16)
    activity = rng.lognormal(0.0, 1.5, size=n_users)
    k = b.centres_max
    # Centres spread like the content itself (each dimension at the content space's scale).
    s = content_scale(d)
    region_centres = rng.normal(0.0, s, size=(n_regions, 4, d))
    pick = rng.integers(4, size=(n_users, k))
    centres0 = 0.7 * region_centres[user_region[:, None], pick] + rng.normal(0.0, 0.7 * s, size=(n_users, k, d))
    centres1 = centres0 + cfg.drift * rng.normal(0.0, s, size=(n_users, k, d))
    n_centres = rng.integers(1, k + 1, size=n_users)
    sens = per_region(b.region_price_sensitivity, n_regions)[user_region] * rng.lognormal(0, 0.3, n_users)
    return World(content, from_photo, visible, hidden, pop, price, price_z, created, home, available,
                 user_region, activity / activity.sum(), centres0, centres1, n_centres, sens)

"""Calibration: the behaviour model's five intercepts fitted to target rates by pilot simulations.

Implements what makes a market on any catalog look like a shop: its click, cart-per-click and
purchase-per-cart rates on each surface hit ``behaviour.target_rates`` (on by default for a real
catalog). The fitted intercepts go to ``R/config.yaml`` with calibration off, so that file regenerates
the same market.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from mmrank.data.config import BehaviourConfig, MarketConfig
from mmrank.data.market.catalog import Catalog
from mmrank.data.market.logs import concat
from mmrank.data.market.requests import draw_requests
from mmrank.data.market.simulation import simulate
from mmrank.data.market.world import World
from mmrank.errors import ConfigError

# Target rate -> the intercept that moves it.
INTERCEPTS = {"display_click": "display_intercept", "search_click": "search_intercept",
              "cart_per_click": "cart_intercept", "display_purchase_per_cart": "display_buy_intercept",
              "search_purchase_per_cart": "buy_intercept"}


def logit(p: float) -> float:
    """log(p / (1 - p)), ``p`` clipped to [1e-4, 1 - 1e-4]."""
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


def calibrate_if_asked(cfg: MarketConfig, cat: Catalog,
                       world: World) -> tuple[MarketConfig, dict[str, Any] | None]:
    """``cfg`` with calibrated intercepts and calibration off, and the record of the rounds, if
    ``cfg.calibrate`` (default: on for a real catalog); else ``cfg`` unchanged and None."""
    if not (cfg.calibrate if cfg.calibrate is not None else bool(cfg.catalog)):
        return cfg, None
    b, calibration = calibrate(cfg, cat, world)
    # Written to R/config.yaml as fitted, with calibrate off: that file regenerates this market.
    return cfg.model_copy(update={"behaviour": b, "calibrate": False}), calibration


def calibrate(cfg: MarketConfig, cat: Catalog, world: World, rounds: int = 3,
              ) -> tuple[BehaviourConfig, dict[str, Any]]:
    """The five intercepts fitted to ``behaviour.target_rates`` by pilot simulations.

    Each round simulates the whole horizon for the first tenth of the users (at least 5,000 of them,
    or all; their share of the impressions, so histories keep their length) and moves every
    intercept by the logit gap between its target rate and the rate the pilot reached. Returns the
    calibrated behaviour and a record of the rounds (for the manifest). The pilots draw from their own
    random stream.
    """
    b = cfg.behaviour
    missing = [k for k in INTERCEPTS if k not in b.target_rates]
    if missing:
        raise ConfigError(f"behaviour.target_rates: missing key '{missing[0]}' "
                          f"(expected {', '.join(INTERCEPTS)})")
    n_u = min(cfg.n_users, max(5_000, cfg.n_users // 10))
    keep = slice(0, n_u)
    pilot_world = replace(world, user_region=world.user_region[keep], centres0=world.centres0[keep],
                          centres1=world.centres1[keep], n_centres=world.n_centres[keep],
                          sens=world.sens[keep],
                          activity=world.activity[keep] / world.activity[keep].sum())
    rng = np.random.default_rng([cfg.seed, 0xCA11B])
    rounds_log = []
    for _ in range(rounds):
        share = float(world.activity[keep].sum())  # their share of all visits
        pilot = cfg.model_copy(update={"n_users": n_u, "behaviour": b,
                                       "n_impressions": max(1000, int(cfg.n_impressions * share))})
        req = draw_requests(pilot, pilot_world, rng)
        log, _ = simulate(pilot, cat, pilot_world, req, rng, rng)
        search = req.search[concat(log.slot_req, np.int64)]
        click, cart, buy = (concat(x, bool) for x in (log.slot_click, log.slot_cart, log.slot_buy))
        rates = {"display_click": click[~search].mean(), "search_click": click[search].mean(),
                 "cart_per_click": cart.sum() / max(click.sum(), 1),
                 "display_purchase_per_cart": buy[~search].sum() / max(cart[~search].sum(), 1),
                 "search_purchase_per_cart": buy[search].sum() / max(cart[search].sum(), 1)}
        rounds_log.append({"intercepts": {f: round(getattr(b, f), 4) for f in INTERCEPTS.values()},
                           "rates": {k: round(float(v), 4) for k, v in rates.items()}})
        b = b.model_copy(update={f: getattr(b, f) + logit(b.target_rates[k]) - logit(rates[k])
                                 for k, f in INTERCEPTS.items()})
    final = {f: round(getattr(b, f), 4) for f in INTERCEPTS.values()}
    return b.model_copy(update=final), {"targets": dict(b.target_rates), "rounds": rounds_log,
                                        "intercepts": final,
                                        "pilot": {"users": n_u, "impressions": pilot.n_impressions}}

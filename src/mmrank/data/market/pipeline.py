"""Generating a market, top to bottom: items, the hidden world, calibration, requests, the simulated
logs, then the tables under ``R/data/``, the ground truth under ``R/truth/`` and the manifest.

Each random step draws from its own stream of the seed, so the same config gives byte-identical files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.config import record
from mmrank.data.config import MarketConfig
from mmrank.data.market.calibration import calibrate_if_asked
from mmrank.data.io import write_table
from mmrank.data.market.catalog import drop_modalities, load_catalog
from mmrank.data.market.hidden import write_truth
from mmrank.data.market.logs import sort_log
from mmrank.data.market.manifest import market_manifest, write_manifest
from mmrank.lineage import stamp_data
from mmrank.data.market.queries import query_columns, take_query_photos
from mmrank.data.market.requests import draw_requests
from mmrank.data.market.simulation import simulate
from mmrank.data.market.stats import surface_stats
from mmrank.data.market.tables import time_split, write_tables
from mmrank.data.market.world import build_world


def generate_market(cfg: MarketConfig, out: str | Path) -> dict[str, Any]:
    """Generate the market: tables under ``out/data/``, the hidden world under ``out/truth/``.

    Returns the manifest (also written as ``out/data/manifest.json``).
    """
    started = time.perf_counter()
    out = Path(out)
    data_dir, truth_dir = out / "data", out / "truth"
    data_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(cfg.seed)
    r_cat, r_world, r_req, r_beh, r_q, r_photo = (np.random.default_rng(s) for s in root.spawn(6))

    cat = load_catalog(cfg, r_cat)
    drop_modalities(cfg, cat)
    world = build_world(cfg, cat, r_world)
    cfg, calibration = calibrate_if_asked(cfg, cat, world)
    req = draw_requests(cfg, world, r_req)
    log, intents = simulate(cfg, cat, world, req, r_beh, r_q)
    slots, cands = sort_log(log)

    queries = query_columns(cfg, req, intents)
    photos = take_query_photos(cfg, cat, intents, len(queries.image_rows), r_photo)
    split = time_split(cfg, req)
    tables = write_tables(data_dir, cfg, cat, world, req, slots, cands, queries, photos, split)
    write_truth(truth_dir, cfg, cat, world, req, slots, cands, intents)
    if tables.noisy is not None:  # issue 20: which pairs are noise, for evaluation code only
        write_table(tables.noisy, truth_dir / "noisy_pairs.parquet")

    surfaces = surface_stats(cfg, cat, world, req, slots, split.start_ts, split.split_ts)
    manifest = market_manifest(cfg, cat, req, slots, tables, len(photos), split, surfaces, calibration)
    if cands.marginal_se is not None:
        b = cfg.behaviour
        manifest["search_policy"] = {
            "temperature": b.policy_temperature, "exploration": b.policy_exploration,
            "marginal_samples": b.policy_marginal_samples,
            "marginal_se_max": float(cands.marginal_se.max(initial=0.0)),
            "marginal_se_mean": float(cands.marginal_se[cands.marginal > 0].mean())
            if (cands.marginal > 0).any() else 0.0,
            "about": "candidates/lists carry each shown item's propensity (exact) and each candidate's "
                     "probability of each position (Monte Carlo, Rao-Blackwellised; standard errors above)"}
    write_manifest(data_dir, manifest)
    stamp_data(data_dir)  # the tables' digests (data/lineage.json, mmrank.lineage)
    record(out, "market", cfg)
    manifest["seconds"] = round(time.perf_counter() - started, 1)  # not written: files stay identical
    return manifest

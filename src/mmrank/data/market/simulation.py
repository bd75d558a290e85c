"""The simulation: the requests of the whole horizon, time chunk by time chunk, on both surfaces.

Implements the market design's loop: "everything is vectorised per time chunk (a chunk sees the clicks
of earlier chunks)". It builds the retrieval indexes and the search intents, then runs each chunk's
display requests (:mod:`~mmrank.data.market.display`) and search requests
(:mod:`~mmrank.data.market.search`) and adds their clicks to the users' recent clicks.
"""

from __future__ import annotations

import numpy as np
from rich.progress import Progress

from mmrank.data.config import MarketConfig
from mmrank.data.market.catalog import Catalog
from mmrank.data.market.display import display_chunk
from mmrank.data.market.logs import Logged
from mmrank.data.market.queries import Intents, draw_intents
from mmrank.data.market.requests import Requests
from mmrank.data.market.retrieval import content_neighbours, region_groups
from mmrank.data.market.search import search_chunk
from mmrank.data.market.state import SimState
from mmrank.data.market.tastes import Recent
from mmrank.data.market.world import DAY, World, horizon, per_region

N_CHUNKS_PER_DAY = 4


def simulate(cfg: MarketConfig, cat: Catalog, world: World, req: Requests, rng: np.random.Generator,
             rng_q: np.random.Generator) -> tuple[Logged, Intents]:
    """The logs of ``req``, drawn from ``rng``, and the search intents, drawn from ``rng_q``."""
    b = cfg.behaviour
    n_regions = cfg.n_regions
    by_region, by_type = region_groups(cat, world, n_regions)
    neighbours = content_neighbours(world.content)
    live_region = by_region.live(req.region.astype(np.int64), req.ts)
    intents = draw_intents(cfg, cat, world, req, by_region, by_type, live_region, rng_q)
    sim = SimState(cfg=cfg, cat=cat, world=world, req=req, rng=rng, recent=Recent(cfg.n_users), log=Logged(),
                   by_region=by_region, by_type=by_type, live_region=live_region, neighbours=neighbours,
                   intents=intents, decay=per_region(b.region_position_decay, n_regions),
                   photo_w=per_region(b.region_photo_weight, n_regions),
                   title_w=per_region(b.region_title_weight, n_regions),
                   outside=per_region(b.region_outside_option, n_regions),
                   shown_n=per_region(b.region_shown, n_regions), horizon=horizon(cfg))
    chunk_edges = np.searchsorted(req.ts, np.arange(0, horizon(cfg) + 1, DAY // N_CHUNKS_PER_DAY))
    with Progress(transient=True) as progress:
        task = progress.add_task("simulating behaviour", total=len(req.ts))
        for a, z in zip(chunk_edges[:-1], chunk_edges[1:]):
            if z <= a:
                continue
            rows = np.arange(a, z)
            clicks = []
            for surface_rows, fn in ((rows[~req.search[rows]], display_chunk),
                                     (rows[req.search[rows]], search_chunk)):
                if len(surface_rows):
                    clicks.append(fn(sim, surface_rows))
            users = np.concatenate([c[0] for c in clicks])
            sim.recent.add(users, np.concatenate([c[1] for c in clicks]), np.concatenate([c[2] for c in clicks]))
            progress.advance(task, len(rows))
    return sim.log, intents

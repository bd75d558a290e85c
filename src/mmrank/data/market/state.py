"""What every time chunk of the simulation reads, and the two things it updates (recent clicks, the log).

Implements the market design's "a chunk sees the clicks of earlier chunks": the state is built once by
:func:`mmrank.data.market.simulation.simulate` and handed to each surface's chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrank.data.config import MarketConfig
from mmrank.data.market.catalog import Catalog
from mmrank.data.market.logs import Logged
from mmrank.data.market.queries import Intents
from mmrank.data.market.requests import Requests
from mmrank.data.market.retrieval import Groups
from mmrank.data.market.tastes import Recent
from mmrank.data.market.world import World


@dataclass
class SimState:
    """The simulation's inputs, per-region settings and retrieval indexes; ``recent`` and ``log`` change."""

    cfg: MarketConfig
    cat: Catalog
    world: World
    req: Requests
    rng: np.random.Generator
    recent: Recent
    log: Logged
    by_region: Groups
    by_type: Groups
    live_region: np.ndarray  # request -> items of its region alive at its time
    neighbours: np.ndarray   # (I, k) look-alikes in content space
    intents: Intents
    decay: np.ndarray        # per region: position decay
    photo_w: np.ndarray      # per region: weight on what photos show
    title_w: np.ndarray      # per region: weight on what titles name
    outside: np.ndarray      # per region: utility of buying nothing
    shown_n: np.ndarray      # per region: search list length
    horizon: int

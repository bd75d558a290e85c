"""One creative choice with its reason, for ``POST /v1/creative``: the run's creatives and the selector
``mmrank creative compare`` saved (``R/creative/selector.json``). Reads only ``R/data/`` and
``R/creative/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmrank.creative.selector import NAMES, Creatives, Selector, explain, words
from mmrank.errors import DataError


@dataclass
class CreativeChooser:
    creatives: Creatives
    selector: Selector
    history: int = 5

    @classmethod
    def load(cls, run: str | Path, history: int = 5) -> "CreativeChooser":
        return cls(Creatives.load(run), Selector.load(Path(run) / "creative" / "selector.json"), history)

    def choose(self, item_id: int, region: int, recent_clicks: list[int]) -> dict:
        """The best creative of ``item_id`` for a user in ``region`` whose last creative clicks (creative
        ids, oldest first) are ``recent_clicks``; with the reason and every creative's score."""
        cr = self.creatives
        if not -(2 ** 63) <= int(item_id) < 2 ** 63:
            raise DataError(f"item {item_id} has no creatives", column="item_id")
        pos = int(np.searchsorted(cr.item_ids, np.int64(item_id)))
        if pos >= len(cr.item_ids) or cr.item_ids[pos] != item_id:
            raise DataError(f"item {item_id} has no creatives", column="item_id")
        if not 0 <= region < len(self.selector.W):
            raise DataError(f"region {region} is not one of the market's {len(self.selector.W)} regions",
                            column="region")
        clicks = [int(c) for c in recent_clicks][-self.history:]
        bad = [c for c in clicks if not 0 <= c < len(cr.attr_by_creative)]
        if bad:
            raise DataError(f"creative {bad[0]} is not a creative of this run", column="recent_clicks")
        past = cr.attr_by_creative[clicks] if clicks else np.zeros((0, len(NAMES)), np.int8)
        alt, n = past.sum(axis=0)[None], np.array([len(clicks)])
        attrs = cr.attrs[pos][None]
        scores = self.selector.scores(attrs, np.array([region]), alt, n)[0]
        k = int(np.argmax(scores))
        contrib = self.selector.contributions(attrs, np.array([region]), alt, n)[0]
        gain = {a: float(contrib[k, j] - contrib[0, j]) for j, a in enumerate(NAMES)}
        reason = explain(words(cr.attrs[pos, k]), words(cr.attrs[pos, 0]),
                         {"clicks": [words(x) for x in past], "region": region}, gain)
        return {"item_id": int(item_id), "creative_id": int(cr.creative_ids[pos, k]), "k": k,
                "default_creative_id": int(cr.creative_ids[pos, 0]), "attributes": words(cr.attrs[pos, k]),
                "reason": reason, "scores": [float(s) for s in scores]}

"""What a user likes: the taste kernel over interest centres, and the pull of recent clicks.

Implements the market design's users: "a few interest centres in content space, drifting over time"
(:func:`taste`), and "come back to near-duplicates of what they recently clicked" (:class:`Recent`,
:func:`revisit`).
"""

from __future__ import annotations

import numpy as np

from mmrank.data.config import BehaviourConfig
from mmrank.data.behaviour import near_similarity
from mmrank.data.market.world import World

RECENT = 10  # recent clicks a user comes back to


def taste(world: World, b: BehaviourConfig, users: np.ndarray, frac: np.ndarray, items: np.ndarray,
          photo_w: np.ndarray, title_w: np.ndarray) -> np.ndarray:
    """Content appeal of ``items`` (B, S) to ``users`` (B,) at time fraction ``frac`` (B,).

    A log-sum-exp over the user's interest centres of a Gaussian kernel in content space, whose
    dimensions are weighted by the region's weight on photos (``photo_w``) and titles (``title_w``).
    """
    c = (1 - frac)[:, None, None] * world.centres0[users] + frac[:, None, None] * world.centres1[users]
    w = np.where(world.from_photo[None, :], photo_w[:, None], title_w[:, None])  # (B, D)
    v = world.content[items]  # (B, S, D)
    d2 = np.einsum("bsd,bd->bs", v * v, w)[:, :, None] - 2 * np.einsum("bsd,bkd,bd->bsk", v, c, w) \
        + np.einsum("bkd,bkd,bd->bk", c, c, w)[:, None, :]
    logit = -d2 / (2 * b.taste_bandwidth ** 2)
    k_mask = np.arange(c.shape[1])[None, :] < world.n_centres[users][:, None]
    logit = np.where(k_mask[:, None, :], logit, -np.inf)
    mx = logit.max(axis=2, keepdims=True)
    lse = mx[..., 0] + np.log(np.exp(logit - mx).sum(axis=2))
    return b.taste_weight * (lse - np.log(world.n_centres[users])[:, None] + 4.0)


def revisit(world: World, recent: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Max near-duplicate similarity of ``items`` (B, S) to the user's recent clicks ``recent`` (B, M)."""
    has = recent >= 0
    v = world.content[items][:, :, None, :]
    r = world.content[np.maximum(recent, 0)][:, None, :, :]
    sim = near_similarity(v, r)
    return np.where(has[:, None, :], sim, 0.0).max(axis=2, initial=0.0)


class Recent:
    """Each user's last ``RECENT`` clicked items (-1 = none), updated chunk by chunk."""

    def __init__(self, n_users: int) -> None:
        self.items = np.full((n_users, RECENT), -1, np.int64)
        self.ts = np.full((n_users, RECENT), -1, np.int64)

    def add(self, users: np.ndarray, ts: np.ndarray, items: np.ndarray) -> None:
        """Record the clicks of ``users`` at ``ts`` on ``items``, keeping each user's latest ``RECENT``."""
        if not len(users):
            return
        uniq = np.unique(users)
        u = np.concatenate([np.repeat(uniq, RECENT), users])
        t = np.concatenate([self.ts[uniq].ravel(), ts])
        it = np.concatenate([self.items[uniq].ravel(), items])
        order = np.lexsort((t, u))
        u, t, it = u[order], t[order], it[order]
        end = np.searchsorted(u, uniq, side="right")
        idx = end[:, None] - RECENT + np.arange(RECENT)[None, :]
        self.items[uniq], self.ts[uniq] = it[idx], t[idx]

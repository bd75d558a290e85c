"""Evaluation of creative choices against the market's hidden truth (simulated behaviour).

The only reader of ``R/truth/creatives.parquet`` and ``R/truth/creative_users.parquet`` besides the
generator: :class:`CreativeTruth` gives each impression's true click and purchase probability under each
of its item's creatives (the market's probability for the default, times the creative's effect on that
user in that region). The selector's training never imports this module's data.

Purchases assume that a creative scales the purchase probability as it scales the click probability
(it changes whether the user clicks, not what happens after).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmrank.errors import DataError


class CreativeTruth:
    """True effects of creatives: ``effects(user_ids, regions, creative_ids)`` and the impressions'
    base probabilities ``base(request_ids, positions)``."""

    def __init__(self, run: str | Path) -> None:
        truth = Path(run) / "truth"
        path = truth / "creatives.parquet"
        if not path.exists():
            raise DataError("no creative truth here (run `mmrank creative generate` first)", file=str(path))
        t = pq.read_table(path)
        cid = t.column("creative_id").to_numpy()
        reg = np.asarray(t.column("appeal_region").to_pylist(), np.float64)
        tas = np.asarray(t.column("appeal_taste").to_pylist(), np.float64)
        self._region = np.zeros((int(cid.max()) + 1, reg.shape[1]))
        self._taste = np.zeros((int(cid.max()) + 1, tas.shape[1]))
        self._region[cid], self._taste[cid] = reg, tas
        u = pq.read_table(truth / "creative_users.parquet")
        self._user_ids = u.column("user_id").to_numpy()
        self._uorder = np.argsort(self._user_ids, kind="stable")
        self._user_taste = np.asarray(u.column("taste").to_pylist(), np.float64)
        s = pq.read_table(truth / "slots.parquet", columns=["request_id", "position", "p_click",
                                                            "p_purchase"]).to_pandas()
        self._slots = s.set_index(["request_id", "position"])

    def effects(self, user_ids, regions, creative_ids) -> np.ndarray:
        """The multiplier (B, K) of each impression's click probability under each of ``creative_ids``
        (B, K); exactly 1 for default creatives."""
        user_ids = np.asarray(user_ids)
        pos = self._uorder[np.clip(np.searchsorted(self._user_ids[self._uorder], user_ids), 0,
                                   len(self._user_ids) - 1)]
        if (self._user_ids[pos] != user_ids).any():
            raise ValueError("a user id is not a user of this market")
        cre = np.asarray(creative_ids, np.int64)
        reg = np.asarray(regions, np.int64)[:, None]
        logit = self._region[cre, np.broadcast_to(reg, cre.shape)]
        logit = logit + np.einsum("ba,bka->bk", self._user_taste[pos], self._taste[cre])
        return np.exp(logit)

    def base(self, request_ids, positions) -> tuple[np.ndarray, np.ndarray]:
        """The market's P(click) and P(purchase) (B,) of logged impressions (with the default creative)."""
        idx = list(zip(np.asarray(request_ids).tolist(), np.asarray(positions).tolist()))
        rows = self._slots.loc[idx]
        return rows["p_click"].to_numpy(), rows["p_purchase"].to_numpy()

    def probabilities(self, log, creative_ids) -> tuple[np.ndarray, np.ndarray]:
        """True P(click) and P(purchase) (B, K) of log rows ``log`` (columns ``user_id, region,
        request_id, position``) under each of ``creative_ids`` (B, K) (clipped at 0.99)."""
        eff = self.effects(log["user_id"].to_numpy(), log["region"].to_numpy(), creative_ids)
        pc, pp = self.base(log["request_id"].to_numpy(), log["position"].to_numpy())
        click = np.minimum(pc[:, None] * eff, 0.99)
        return click, np.minimum(pp[:, None] * eff, click)

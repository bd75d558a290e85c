"""The counterfactual evaluator: what a market's users would do if a search list were shown in another order.

The only code besides eval scripts that reads ``R/truth/``; no training stage does. It applies the
market's behaviour model (:mod:`mmrank.data.behaviour`) to any order of a logged search request's
candidates, with the request's hidden state (engagement, the user's price sensitivity, the region's
position decay and outside option) and each candidate's utilities as the generator drew them.

Example::

    >>> ev = Evaluator("runs/demo")                                   # doctest: +SKIP
    >>> out = ev.expected([12, 40], [np.array([...]), np.array([...])])  # doctest: +SKIP
    >>> out["purchases"], out["gmv"]                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmrank.data.behaviour import ListInputs, list_probabilities
from mmrank.errors import DataError


class Evaluator:
    """Expected clicks, carts, purchases and GMV of search lists in a given order.

    Args:
        run: a run directory made by ``mmrank market generate`` (it needs ``R/truth/``).
    """

    def __init__(self, run: str | Path) -> None:
        truth = Path(run) / "truth"
        self._truth = truth
        if not (truth / "candidates.parquet").exists():
            raise DataError("no market truth here (the evaluator needs a run made by "
                            "`mmrank market generate`)", file=str(truth / "candidates.parquet"))
        self.substitution = float(json.loads((truth / "behaviour.json").read_text())["substitution"])
        items = pq.read_table(truth / "items.parquet", columns=["item_id", "content", "log_price"])
        self._item_ids = items.column("item_id").to_numpy()
        self._order = np.argsort(self._item_ids, kind="stable")
        self._content = np.asarray(items.column("content").combine_chunks().flatten().to_numpy(),
                                   np.float64).reshape(len(self._item_ids), -1)
        self._log_price = items.column("log_price").to_numpy()
        req = pq.read_table(truth / "requests.parquet").to_pydict()
        self._req = {k: np.asarray(v) for k, v in req.items()}
        cand = pq.read_table(truth / "candidates.parquet")
        self._c_req = cand.column("request_id").to_numpy()
        self._c_item = cand.column("item_id").to_numpy()
        self._c_base = np.stack([cand.column(c).to_numpy() for c in
                                 ("base_click", "base_cart", "base_buy")], axis=1)
        self._c_start = np.searchsorted(self._c_req, np.arange(len(self._req["request_id"]) + 1))

    def filter_precision(self, dropped_pair_ids) -> dict[str, float | int | None]:
        """How well a noise filter did: ``dropped_pair_ids`` are rows of ``R/data/pairs.parquet`` it
        dropped (e.g. ``R/pretrain/<row>/dropped.json``), against ``R/truth/noisy_pairs.parquet``
        (no file: the market has no noisy pairs).

        Returns ``precision`` (share of the dropped that are noise; None if none dropped), ``recall``
        (share of the noise dropped; None without noise), ``noise_share`` (noisy pairs / training pairs),
        ``dropped``, ``noisy`` and ``dropped_noisy`` counts.
        """
        dropped = np.unique(np.asarray(list(dropped_pair_ids), np.int64))
        path = self._truth / "noisy_pairs.parquet"
        noisy = (pq.read_table(path, columns=["pair_id"]).column("pair_id").to_numpy()
                 if path.exists() else np.zeros(0, np.int64))
        pairs = self._truth.parent / "data" / "pairs.parquet"
        split = pq.read_table(pairs, columns=["split"]).column("split").to_pylist()
        if len(dropped) and (dropped.min() < 0 or dropped.max() >= len(split)):
            bad = int(dropped[(dropped < 0) | (dropped >= len(split))][0])
            raise DataError(f"pair id {bad} is not a row of pairs.parquet ({len(split)} rows)",
                            file=str(pairs))
        hit = int(np.isin(dropped, noisy).sum())
        n_train = sum(s == "train" for s in split)
        return {"precision": hit / len(dropped) if len(dropped) else None,
                "recall": hit / len(noisy) if len(noisy) else None,
                "noise_share": len(noisy) / n_train if n_train else 0.0,
                "dropped": int(len(dropped)), "noisy": int(len(noisy)), "dropped_noisy": hit}

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(self._item_ids[self._order], ids), 0, len(self._order) - 1)
        return self._order[pos]

    def candidates(self, request_id: int) -> np.ndarray:
        """The logged candidates of a search request, in the production order."""
        r = int(request_id)
        return self._c_item[self._c_start[r]:self._c_start[r + 1]]

    def n_shown(self, request_ids: np.ndarray) -> np.ndarray:
        return self._req["n_shown"][np.asarray(request_ids, np.int64)]

    def regions(self, request_ids: np.ndarray) -> np.ndarray:
        return self._req["region"][np.asarray(request_ids, np.int64)]

    def probabilities(self, request_ids, orders) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Per-slot P(click), P(cart), P(purchase) (B, K) of the shown part of each order, the shown
        items' prices (B, K) and the mask of real slots."""
        request_ids = np.asarray(request_ids, np.int64)
        if len(request_ids) != len(orders):
            raise ValueError(f"{len(request_ids)} request ids but {len(orders)} orders")
        n = len(request_ids)
        if n and (request_ids.min() < 0 or request_ids.max() >= len(self._req["request_id"])):
            raise ValueError("a request id is not a request of this market")
        surf = self._req["surface"][request_ids]
        if n and (surf != "search").any():
            raise ValueError(f"request {int(request_ids[np.flatnonzero(surf != 'search')[0]])} is not a "
                             "search request: the evaluator orders search lists")
        shown = self._req["n_shown"][request_ids].astype(np.int64)
        k = int(shown.max()) if n else 1
        d = self._content.shape[1]
        base = np.zeros((n, k, 3))
        rows = np.zeros((n, k), np.int64)
        mask = np.zeros((n, k), bool)
        for b, (r, order) in enumerate(zip(request_ids, orders)):
            order = np.asarray(order, np.int64)[: shown[b]]
            a, z = self._c_start[r], self._c_start[r + 1]
            cand = self._c_item[a:z]
            srt = np.argsort(cand, kind="stable")
            at = np.clip(np.searchsorted(cand[srt], order), 0, max(len(cand) - 1, 0))
            bad = (cand[srt][at] != order) if len(cand) else np.ones(len(order), bool)
            if bad.any():
                raise ValueError(f"request {int(r)}: item {int(order[np.flatnonzero(bad)[0]])} is not one "
                                 "of its candidates")
            if len(np.unique(order)) != len(order):
                raise ValueError(f"request {int(r)}: an item appears twice in the order")
            idx = a + srt[at]
            m = len(order)
            base[b, :m] = self._c_base[idx]
            rows[b, :m] = self._rows(order)
            mask[b, :m] = True
        x = ListInputs(base[..., 0], base[..., 1], base[..., 2], self._log_price[rows],
                       self._content[rows].reshape(n, k, d), mask,
                       self._req["sensitivity"][request_ids], self._req["position_decay"][request_ids],
                       self._req["outside_option"][request_ids], self._req["engagement"][request_ids],
                       self.substitution)
        price = np.where(mask, np.exp(self._log_price[rows]), 0.0)
        return list_probabilities(x), price, mask

    def expected(self, request_ids, orders) -> dict[str, np.ndarray]:
        """Expected clicks, carts, purchases and GMV per request when ``orders`` are shown.

        Args:
            request_ids: (B,) search request ids.
            orders: B item-id arrays, each an order of (some of) that request's candidates; the first
                ``n_shown`` of each (the region's list length) are shown.

        Returns:
            dict of (B,) arrays: ``clicks``, ``carts``, ``purchases``, ``gmv``.
        """
        p, price, _ = self.probabilities(request_ids, orders)
        return {"clicks": p["click"].sum(axis=1), "carts": p["cart"].sum(axis=1),
                "purchases": p["purchase"].sum(axis=1), "gmv": (p["purchase"] * price).sum(axis=1)}


def item_appeal(run: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Each item's true appeal (``visible_appeal + hidden_appeal`` of ``R/truth/items.parquet``: what its
    content shows plus what only behaviour reveals), for evaluation code only (the exposure-bias measure,
    :mod:`mmrank.report.bias`). Returns ``(item_ids sorted, appeal)``."""
    path = Path(run) / "truth" / "items.parquet"
    if not path.exists():
        raise DataError("no market truth here (the item appeal needs a run made by "
                        "`mmrank market generate`)", file=str(path))
    t = pq.read_table(path, columns=["item_id", "visible_appeal", "hidden_appeal"])
    ids = t.column("item_id").to_numpy().astype(np.int64)
    appeal = t.column("visible_appeal").to_numpy().astype(np.float64) + \
        t.column("hidden_appeal").to_numpy().astype(np.float64)
    order = np.argsort(ids, kind="stable")
    return ids[order], appeal[order]


def slot_click_probability(run: str | Path, request_ids, positions) -> np.ndarray:
    """The true click probability of logged impressions (``p_click`` of ``R/truth/slots.parquet``: the
    item in its shown context, position included), by ``(request_id, position)``; NaN where no slot
    matches. For evaluation code only (the exposure-bias measure, :mod:`mmrank.report.bias`)."""
    path = Path(run) / "truth" / "slots.parquet"
    if not path.exists():
        raise DataError("no market truth here (the slots' click probabilities need a run made by "
                        "`mmrank market generate`)", file=str(path))
    t = pq.read_table(path, columns=["request_id", "position", "p_click"])
    key = t.column("request_id").to_numpy().astype(np.int64) * 4096 + t.column("position").to_numpy()
    order = np.argsort(key, kind="stable")
    key, p = key[order], t.column("p_click").to_numpy().astype(np.float64)[order]
    want = np.asarray(request_ids, np.int64) * 4096 + np.asarray(positions, np.int64)
    if len(key) == 0:
        return np.full(len(want), np.nan)
    at = np.clip(np.searchsorted(key, want), 0, len(key) - 1)
    return np.where(key[at] == want, p[at], np.nan)

"""Off-policy estimates of a new search order's clicks, purchases and GMV per request, from the logs alone.

A target policy shows, for each logged request, its own order of the request's retrieved candidates
(its first ``n_shown``, the length of the logged list). The logs hold what the logging policy showed,
the outcomes, and each candidate's probability of being shown at each position under the logging
policy (``Lists.logging_marginals``: logged by a stochastic production policy, else 1 at the logged
position). Rewards per shown slot: ``clicks``, ``purchases``, ``gmv`` (price x purchase); a policy's
value is the expected sum over its shown slots, per request (what :class:`mmrank.data.truth.Evaluator`
computes from the truth).

Estimators (N requests, logged slots s = (request n, position j, item i), target order sigma):

* ``ips``: item-position IPS (Li et al. 2018): V = 1/N sum_s r_s 1[sigma_n(j) = i] / P0(i at j | n);
  per position it is the contextual-bandit IPS (obp's ``InverseProbabilityWeighting`` with ``position``).
* ``snips``: self-normalised per position: V = sum_j N_j/N * sum_{s at j} r_s w_s / sum_{s at j} w_s.
* ``dr``: doubly robust with the click model below as the reward model: V = DM + 1/N sum_s (r_s - r^_s) w_s
  (per position, obp's ``DoublyRobust``).
* ``pbm``: the direct estimate of a position-based click model (examination x relevance, Chuklin et al.
  2015): P(event at position j of item i) = theta_j * gamma_i, fit by EM on the training requests'
  logged slots (per event type; GMV = price x the purchase model); V = 1/N sum_n sum_j theta_j gamma_sigma_n(j).

Nothing here reads ``R/truth/``: only ``R/data/lists.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrank.rerank.data import Lists

METRICS = ("clicks", "purchases", "gmv")
ESTIMATORS = ("ips", "snips", "dr", "pbm")
_EVENT = {"clicks": "click", "purchases": "purchase", "gmv": "purchase"}


# ---------------------------------------------------------------------------------------------------
# The estimators on flat logged slots


def ips(n_requests: int, reward: np.ndarray, weight: np.ndarray) -> float:
    """1/N sum_s r_s w_s, with w_s = pi(i at j) / P0(i at j)."""
    return float(np.sum(reward * weight) / max(n_requests, 1))


def snips(n_requests: int, reward: np.ndarray, weight: np.ndarray, pos: np.ndarray) -> float:
    """Self-normalised per position; a position whose weights sum to 0 contributes 0."""
    total = 0.0
    for j in np.unique(pos):
        at = pos == j
        w = weight[at].sum()
        if w > 0:
            total += at.sum() / max(n_requests, 1) * float(np.sum(reward[at] * weight[at]) / w)
    return total


def dr(n_requests: int, reward: np.ndarray, weight: np.ndarray, reward_hat_logged: np.ndarray,
       dm_per_request: np.ndarray) -> float:
    """DM + 1/N sum_s (r_s - r^(logged item at j)) w_s."""
    return float(np.sum(dm_per_request) / max(n_requests, 1)
                 + np.sum((reward - reward_hat_logged) * weight) / max(n_requests, 1))


# ---------------------------------------------------------------------------------------------------
# The position-based click model


@dataclass
class PositionBasedModel:
    """P(event | item i at position j) = theta[j] * gamma(i); items never logged get ``gamma_prior``."""

    theta: np.ndarray
    item_ids: np.ndarray   # sorted
    gamma: np.ndarray
    gamma_prior: float

    @classmethod
    def fit(cls, item: np.ndarray, pos: np.ndarray, event: np.ndarray, n_iter: int = 30,
            prior_strength: float = 2.0) -> "PositionBasedModel":
        """EM over logged slots (item id, position, 0/1 event); gamma smoothed towards the mean rate with
        ``prior_strength`` pseudo-observations; theta normalised to theta[0] = 1."""
        ids, inv = np.unique(item, return_inverse=True)
        k = int(pos.max(initial=0)) + 1
        c = event.astype(np.float64)
        rate = float(c.mean()) if len(c) else 0.0
        theta = 1.0 / (1.0 + np.arange(k)) ** 0.5
        gamma = np.full(len(ids), min(max(rate / theta.mean(), 1e-6), 0.99))
        prior = float(gamma[0]) if len(ids) else rate
        n_item = np.bincount(inv, minlength=len(ids)).astype(np.float64)
        n_pos = np.maximum(np.bincount(pos, minlength=k).astype(np.float64), 1.0)
        for _ in range(n_iter):
            t, g = theta[pos], gamma[inv]
            miss = np.maximum(1.0 - t * g, 1e-12)
            e_exam = c + (1 - c) * t * (1 - g) / miss      # P(examined | outcome)
            e_rel = c + (1 - c) * (1 - t) * g / miss        # P(relevant | outcome)
            theta = np.clip(np.bincount(pos, e_exam, minlength=k) / n_pos, 1e-6, 1.0)
            prior = float(e_rel.mean()) if len(e_rel) else prior
            gamma = np.clip((np.bincount(inv, e_rel, minlength=len(ids)) + prior_strength * prior)
                            / (n_item + prior_strength), 1e-9, 1.0)
        scale = theta[0]
        return cls(theta / scale, ids, np.clip(gamma * scale, 0.0, None), prior * scale)

    def relevance(self, item: np.ndarray) -> np.ndarray:
        at = np.clip(np.searchsorted(self.item_ids, item), 0, max(len(self.item_ids) - 1, 0))
        hit = (self.item_ids[at] == item) if len(self.item_ids) else np.zeros(len(item), bool)
        return np.where(hit, self.gamma[at] if len(self.gamma) else 0.0, self.gamma_prior)

    def examination(self, pos: np.ndarray) -> np.ndarray:
        pos = np.asarray(pos)
        return np.where(pos < len(self.theta), self.theta[np.minimum(pos, len(self.theta) - 1)], self.theta[-1])


def fit_click_models(lists: Lists, rows: np.ndarray) -> dict[str, PositionBasedModel]:
    """The click and purchase PBMs fit on the logged slots of requests ``rows``."""
    idx = np.concatenate([np.arange(lists.offsets[r], lists.offsets[r + 1]) for r in rows]) \
        if len(rows) else np.zeros(0, np.int64)
    idx = idx[lists.position[idx] >= 0]
    return {e: PositionBasedModel.fit(lists.item_id[idx], lists.position[idx], lists.label(e)[idx])
            for e in ("click", "purchase")}


# ---------------------------------------------------------------------------------------------------
# A target order against the logs


@dataclass
class LoggedSlots:
    """The logged slots of the evaluated requests, flat (S,), and what every estimator needs of them."""

    n_requests: int
    req: np.ndarray       # (S,) 0..N-1
    pos: np.ndarray
    cand: np.ndarray      # flat candidate index into the Lists
    p0: np.ndarray        # P0(logged item at its logged position)
    n_shown: np.ndarray   # (N,)

    @classmethod
    def of(cls, lists: Lists, rows: np.ndarray) -> "LoggedSlots":
        marg = lists.logging_marginals()
        req, cand = [], []
        n_shown = np.zeros(len(rows), np.int64)
        for n, r in enumerate(rows):
            idx = np.arange(lists.offsets[r], lists.offsets[r + 1])
            idx = idx[lists.position[idx] >= 0]
            n_shown[n] = len(idx)
            req.append(np.full(len(idx), n, np.int64))
            cand.append(idx)
        req_a = np.concatenate(req) if req else np.zeros(0, np.int64)
        cand_a = np.concatenate(cand) if cand else np.zeros(0, np.int64)
        pos = lists.position[cand_a].astype(np.int64)
        return cls(len(rows), req_a, pos, cand_a, marg[cand_a, pos].astype(np.float64), n_shown)


def target_weights(lists: Lists, slots: LoggedSlots, orders: list[np.ndarray]) -> np.ndarray:
    """w_s = 1[target shows the logged item at the logged position] / P0 (0 where P0 = 0)."""
    tpos = np.full(len(lists.item_id), -1, np.int64)
    for n, order in enumerate(orders):
        top = np.asarray(order, np.int64)[: slots.n_shown[n]]
        tpos[top] = np.arange(len(top))
    match = tpos[slots.cand] == slots.pos
    return np.where(match & (slots.p0 > 0), 1.0 / np.maximum(slots.p0, 1e-300), 0.0)


def rewards(lists: Lists, cand: np.ndarray) -> dict[str, np.ndarray]:
    return {"clicks": lists.click[cand].astype(np.float64), "purchases": lists.purchase[cand].astype(np.float64),
            "gmv": lists.price[cand] * lists.purchase[cand]}


def estimate(lists: Lists, rows: np.ndarray, orders: list[np.ndarray],
             models: dict[str, PositionBasedModel], slots: LoggedSlots | None = None) -> dict[str, dict[str, float]]:
    """Every estimator's value per request of the target ``orders`` (flat candidate indices per request
    of ``rows``, best first; its first ``n_shown`` are shown): ``{estimator: {metric: value}}``."""
    slots = slots or LoggedSlots.of(lists, rows)
    w = target_weights(lists, slots, orders)
    r = rewards(lists, slots.cand)
    out: dict[str, dict[str, float]] = {e: {} for e in ESTIMATORS}
    for m in METRICS:
        pbm = models[_EVENT[m]]
        price = lists.price if m == "gmv" else np.ones(len(lists.price))
        dm = np.zeros(slots.n_requests)
        for n, order in enumerate(orders):
            top = np.asarray(order, np.int64)[: slots.n_shown[n]]
            dm[n] = float(np.sum(pbm.examination(np.arange(len(top))) * pbm.relevance(lists.item_id[top]) * price[top]))
        r_hat = pbm.examination(slots.pos) * pbm.relevance(lists.item_id[slots.cand]) * price[slots.cand]
        out["ips"][m] = ips(slots.n_requests, r[m], w)
        out["snips"][m] = snips(slots.n_requests, r[m], w, slots.pos)
        out["dr"][m] = dr(slots.n_requests, r[m], w, r_hat, dm)
        out["pbm"][m] = float(dm.mean()) if slots.n_requests else float("nan")
    return out


def summary(truth: dict[str, float], estimates: dict[str, dict[str, dict[str, float]]],
            metric_map: dict[str, str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per estimator and metric, across models: bias (mean estimate - truth), RMSE and the Spearman rank
    correlation of the estimator's model order with the true order. ``truth``: ``{model: {metric: value}}``
    keyed like ``metric_map`` (estimate metric -> truth key)."""
    from scipy.stats import spearmanr

    models = [m for m in estimates if m in truth]
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for e in ESTIMATORS:
        out[e] = {}
        for m, tkey in metric_map.items():
            pairs = [(estimates[k][e][m], truth[k][tkey]) for k in models
                     if truth[k].get(tkey) is not None and estimates[k][e].get(m) is not None]
            if not pairs:
                out[e][m] = {"bias": None, "rmse": None, "spearman": None}
                continue
            est, tru = np.array(pairs, np.float64).T
            rho = float(spearmanr(est, tru).statistic) if len(pairs) > 2 and np.ptp(est) > 0 and np.ptp(tru) > 0 else None
            out[e][m] = {"bias": float(np.mean(est - tru)), "rmse": float(np.sqrt(np.mean((est - tru) ** 2))),
                         "spearman": rho}
    return out


class OffPolicy:
    """The estimators bound to the logged slots of requests ``rows``, with the click models fit on the
    training requests ``train_rows`` (what :func:`mmrank.rerank.evaluate.model_result` calls)."""

    def __init__(self, lists: Lists, rows: np.ndarray, train_rows: np.ndarray) -> None:
        self.lists, self.rows = lists, np.asarray(rows)
        self.models = fit_click_models(lists, np.asarray(train_rows))
        self.slots = LoggedSlots.of(lists, self.rows)
        self.stochastic = lists.position_prob is not None

    def estimate(self, orders: list[np.ndarray]) -> dict[str, dict[str, float]]:
        return estimate(self.lists, self.rows, orders, self.models, self.slots)

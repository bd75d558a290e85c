"""The market's behaviour model: one set of equations, used to simulate the logs and to evaluate orders.

A shown search list is examined top down with a region's position decay; each slot is clicked with
``exam(pos) * sigmoid(U)``, carted after a click with ``sigmoid(C)``, and of the carted items the user
buys at most one, chosen by a multinomial logit against an outside option (buying nothing). The list
matters beyond each item's own appeal:

* prices are compared within the list: ``price_rel`` is an item's log price minus the shown items' mean;
* similar items substitute for each other: a look-alike shown higher lowers an item's click utility;
* the purchase is a choice among what was carted together.

:func:`list_probabilities` gives the exact per-slot probabilities (the purchase expectation over the
random carted set is computed by Gauss-Laguerre quadrature of ``1/A = int_0^inf exp(-A s) ds``), and
:func:`draw_outcomes` draws one realisation. The generator draws the logs with the second and records
what the first needs under ``R/truth/``; :class:`mmrank.data.truth.Evaluator` calls the first on any
order of a request's candidates.

Example::

    >>> import numpy as np
    >>> from mmrank.data.behaviour import near_similarity
    >>> float(near_similarity(np.zeros((1, 2)), np.zeros((1, 2)))[0])
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRICE_SCALE = 0.35   # log-price difference that counts as "one unit" dearer
NEAR_BANDWIDTH = 0.8  # content distance at which two items are look-alikes
_LAGUERRE = np.polynomial.laguerre.laggauss(32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def near_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """exp(-|a - b|^2 / (2 h^2)) over the last axis: 1 for identical content, ~0 unless look-alikes."""
    d2 = np.sum((a - b) ** 2, axis=-1)
    return np.exp(-d2 / (2 * NEAR_BANDWIDTH ** 2))


def examination(positions: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """Probability of examining 0-based ``positions`` (B, K) under per-request ``decay`` (B,)."""
    return 1.0 / (1.0 + positions) ** decay[:, None]


@dataclass
class ListInputs:
    """A batch of B shown lists of up to K slots, in display order (slot k = position k).

    ``base_u``, ``base_c``, ``base_v`` are the click, cart and buy utilities without the list-dependent
    terms (price comparison, substitution) and without the request's hidden engagement; ``content``
    (B, K, D) is each slot's content vector; ``mask`` marks real slots.
    """

    base_u: np.ndarray   # (B, K)
    base_c: np.ndarray   # (B, K)
    base_v: np.ndarray   # (B, K)
    log_price: np.ndarray  # (B, K)
    content: np.ndarray  # (B, K, D)
    mask: np.ndarray     # (B, K) bool
    sens: np.ndarray     # (B,) price sensitivity of the user
    decay: np.ndarray    # (B,) the region's position decay
    outside: np.ndarray  # (B,) utility of buying nothing
    engagement: np.ndarray  # (B,) the request's hidden engagement
    substitution: float

    def rows(self, sel: slice | np.ndarray) -> "ListInputs":
        """The lists ``sel`` of this batch."""
        return ListInputs(self.base_u[sel], self.base_c[sel], self.base_v[sel], self.log_price[sel],
                          self.content[sel], self.mask[sel], self.sens[sel], self.decay[sel],
                          self.outside[sel], self.engagement[sel], self.substitution)

    def utilities(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.mask
        n = np.maximum(m.sum(axis=1, keepdims=True), 1)
        mean_lp = np.where(m, self.log_price, 0.0).sum(axis=1, keepdims=True) / n
        price_rel = (self.log_price - mean_lp) / PRICE_SCALE
        sim = near_similarity(self.content[:, :, None, :], self.content[:, None, :, :])  # (B, K, K)
        k = m.shape[1]
        above = np.tril(np.ones((k, k), bool), -1)[None] & m[:, None, :]
        sub = np.where(above, sim, 0.0).max(axis=2)
        s = self.sens[:, None]
        u = self.base_u - 0.8 * s * price_rel - self.substitution * sub + self.engagement[:, None]
        c = self.base_c - 0.8 * s * price_rel
        v = self.base_v - s * price_rel
        return u, c, v


def list_probabilities(x: ListInputs, chunk: int = 512) -> dict[str, np.ndarray]:
    """Per-slot P(click), P(cart) and P(purchase) (each (B, K), 0 on padded slots)."""
    if len(x.mask) > chunk:
        parts = [list_probabilities(x.rows(slice(a, a + chunk)), chunk)
                 for a in range(0, len(x.mask), chunk)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    u, c, v = x.utilities()
    pos = np.broadcast_to(np.arange(u.shape[1]), u.shape)
    p_click = np.where(x.mask, examination(pos, x.decay) * sigmoid(u), 0.0)
    q = p_click * sigmoid(c)  # P(carted)
    # P(buy i) = E[1{i carted} e^v_i / (e^v0 + sum_{j carted} e^v_j)]
    #          = q_i e^v_i int_0^inf exp(-s (e^v0 + e^v_i)) prod_{j != i} (1 - q_j + q_j exp(-s e^v_j)) ds
    ev = np.exp(np.clip(v - x.outside[:, None], -30, 30))  # utilities relative to the outside option
    nodes, weights = _LAGUERRE
    cst = 1.0 + ev  # (B, K): e^v0 + e^v_i with e^v0 = 1
    s = nodes[None, None, :] / cst[:, :, None]  # (B, K, Q): s for slot i at node t
    # log prod_j (1 - q_j + q_j exp(-s e^v_j)) for all j, then remove j = i.
    term = np.log1p(-q[:, None, :, None] * (1.0 - np.exp(-s[:, :, None, :] * ev[:, None, :, None])))
    total = term.sum(axis=2)  # (B, K, Q)
    diag = np.arange(u.shape[1])
    own = term[:, diag, diag, :]
    integrand = np.exp(total - own)
    integral = (weights[None, None, :] * integrand).sum(axis=2) / cst
    p_buy = np.where(x.mask, q * ev * integral, 0.0)
    return {"click": p_click, "cart": q, "purchase": p_buy}


def draw_outcomes(x: ListInputs, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One realisation: clicked, carted and bought (B, K) bool; at most one purchase per list."""
    u, c, v = x.utilities()
    pos = np.broadcast_to(np.arange(u.shape[1]), u.shape)
    p_click = examination(pos, x.decay) * sigmoid(u)
    clicked = x.mask & (rng.random(u.shape) < p_click)
    carted = clicked & (rng.random(u.shape) < sigmoid(c))
    g = v - x.outside[:, None] + rng.gumbel(size=u.shape)
    g = np.where(carted, g, -np.inf)
    best = np.argmax(g, axis=1)
    wins = np.take_along_axis(g, best[:, None], axis=1)[:, 0] > rng.gumbel(size=len(best))
    bought = np.zeros_like(carted)
    rows = np.flatnonzero(wins & carted.any(axis=1))
    bought[rows, best[rows]] = True
    return {"click": clicked, "cart": carted, "purchase": bought}

"""The search production policy: which retrieved candidates are shown, in which order, and with what
probability (the logged propensities off-policy estimators need).

Deterministic by default (the candidates by descending production score). With
``behaviour.policy_temperature > 0`` or ``behaviour.policy_exploration > 0`` each slot is drawn from

    q_j(i) = (1 - eps) * PL_j(i) + eps / n_j      (i among the n_j candidates not shown above slot j)

where ``PL_j`` is the Plackett-Luce (softmax) choice over production score / temperature among those
candidates (temperature 0: the best remaining one) and ``eps`` the exploration share. The list's
probability is the product of its slots' ``q_j``; each shown item's **propensity** is its slot's
``q_j`` given the slots above (exact). Each candidate's **marginal** probability of being shown at
position j is estimated by Monte Carlo, Rao-Blackwellised: over ``n`` independently drawn rankings,
the mean of the exact conditional ``q_j(i)`` given the sampled prefix (unbiased; its standard error
is the std of those terms over the samples / sqrt(n), recorded in the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PolicyDraw:
    """The drawn lists of a chunk of requests and their probabilities."""

    order: np.ndarray        # (B, K) column of the shown candidate per slot, -1 where no slot
    propensity: np.ndarray   # (B, K) q_j(chosen | slots above), NaN where no slot
    marginal: np.ndarray     # (B, C, K) Monte Carlo P(candidate c shown at position j)
    marginal_se: np.ndarray  # (B, C, K) its standard error


def slot_probs(score: np.ndarray, avail: np.ndarray, temperature: float, exploration: float) -> np.ndarray:
    """``q_j`` over the columns of ``score`` (N, C) among the ``avail`` ones (rows with none: zeros)."""
    n_avail = avail.sum(axis=1, keepdims=True)
    if temperature > 0:
        z = np.where(avail, score / temperature, -np.inf)
        top = np.max(z, axis=1, keepdims=True)
        e = np.where(avail, np.exp(z - np.where(np.isfinite(top), top, 0.0)), 0.0)
        pl = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
    else:
        best = np.argmax(np.where(avail, score, -np.inf), axis=1)
        pl = np.zeros_like(score, dtype=np.float64)
        pl[np.arange(len(score)), best] = 1.0
        pl = np.where(avail, pl, 0.0)
    uniform = np.where(avail, 1.0 / np.maximum(n_avail, 1), 0.0)
    return np.where(n_avail > 0, (1.0 - exploration) * pl + exploration * uniform, 0.0)


def _rollout(score: np.ndarray, valid: np.ndarray, n_slots: np.ndarray, k: int, temperature: float,
             exploration: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ranking per row: chosen columns (N, K), their q (N, K) and every q_j (N, K, C)."""
    n, c = score.shape
    avail = valid.copy()
    order = np.full((n, k), -1, np.int64)
    prop = np.full((n, k), np.nan)
    q_all = np.zeros((n, k, c))
    rows = np.arange(n)
    for j in range(k):
        live = j < n_slots
        q = slot_probs(score, avail & live[:, None], temperature, exploration)
        q_all[:, j] = q
        cum = np.cumsum(q, axis=1)
        total = cum[:, -1]
        pick = np.argmax(cum > (rng.random(n) * total)[:, None], axis=1)
        ok = total > 0
        order[ok, j] = pick[ok]
        prop[ok, j] = q[rows[ok], pick[ok]]
        avail[rows[ok], pick[ok]] = False
    return order, prop, q_all


def draw_lists(score: np.ndarray, valid: np.ndarray, n_slots: np.ndarray, k: int, temperature: float,
               exploration: float, n_samples: int, rng: np.random.Generator) -> PolicyDraw:
    """Draw the shown lists (``n_slots`` per row, at most ``k``) from the candidates ``valid`` of each row
    of ``score`` (B, C), and the marginals by ``n_samples`` further independent rankings."""
    order, prop, _ = _rollout(score, valid, n_slots, k, temperature, exploration, rng)
    b, c = score.shape
    s1 = np.zeros((b, c, k))
    s2 = np.zeros((b, c, k))
    per = max(1, 64 // max(1, b // 64 + 1))  # rankings per vectorised batch
    done = 0
    while done < n_samples:
        m = min(per, n_samples - done)
        _, _, q = _rollout(np.repeat(score, m, axis=0), np.repeat(valid, m, axis=0), np.repeat(n_slots, m),
                           k, temperature, exploration, rng)
        q = q.reshape(b, m, k, c).transpose(0, 1, 3, 2)  # (B, m, C, K)
        s1 += q.sum(axis=1)
        s2 += (q * q).sum(axis=1)
        done += m
    mean = s1 / n_samples
    var = np.maximum(s2 / n_samples - mean * mean, 0.0)
    se = np.sqrt(var / max(n_samples - 1, 1))
    return PolicyDraw(order, prop, mean, se)

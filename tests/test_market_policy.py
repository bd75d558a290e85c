"""The stochastic search policy's logged propensities are the sampler's: each shown item's propensity
in ``lists.parquet`` equals the policy's probability of it at its slot given the slots above (recomputed
here by a plain loop from the logged production scores), the position marginals sum to one per shown
position, the logged lists follow those marginals (chi-square), and the sampler's Monte Carlo marginals
and its draws match the exact Plackett-Luce + exploration probabilities of a small list (enumerated)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

TEMPERATURE, EXPLORATION = 0.5, 0.2


def exact_q(score: np.ndarray, avail: list[int], t: float, eps: float) -> dict[int, float]:
    """The policy's per-slot choice among ``avail``, written out (the reference)."""
    if t > 0:
        w = {i: np.exp(score[i] / t) for i in avail}
        z = sum(w.values())
        pl = {i: w[i] / z for i in avail}
    else:
        best = max(avail, key=lambda i: (score[i], -i))
        pl = {i: float(i == best) for i in avail}
    return {i: (1 - eps) * pl[i] + eps / len(avail) for i in avail}


def list_prob(score: np.ndarray, ranking: tuple[int, ...], t: float, eps: float) -> float:
    avail, p = list(range(len(score))), 1.0
    for i in ranking:
        p *= exact_q(score, avail, t, eps)[i]
        avail.remove(i)
    return p


@pytest.fixture(scope="module")
def policy_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmrank.data.market import generate_market, market_config

    run = tmp_path_factory.mktemp("policy_market")
    generate_market(market_config(size="tiny", seed=1, n_items=300, n_users=400, n_impressions=12_000,
                                  behaviour=dict(policy_temperature=TEMPERATURE, policy_exploration=EXPLORATION,
                                                 policy_marginal_samples=64)), run)
    return run


def test_logged_propensities_are_the_policy_probabilities(policy_market: Path) -> None:
    lists = pq.read_table(policy_market / "data" / "lists.parquet").to_pydict()
    assert len(lists["request_id"]) > 50
    checked = 0
    for items, pos, score, prop in zip(lists["item_ids"], lists["positions"], lists["prod_scores"],
                                       lists["propensities"]):
        pos, score, prop = np.array(pos), np.array(score, np.float64), np.array(prop)
        avail = list(range(len(items)))
        for slot in range(int(pos.max()) + 1):
            i = int(np.flatnonzero(pos == slot)[0])
            want = exact_q(score, avail, TEMPERATURE, EXPLORATION)[i]
            assert prop[i] == pytest.approx(want, rel=1e-4, abs=1e-7)
            avail.remove(i)
            checked += 1
        assert (prop[pos < 0] == 0).all()
    assert checked > 500


def test_position_marginals_sum_to_one_and_fit_the_logged_lists(policy_market: Path) -> None:
    lists = pq.read_table(policy_market / "data" / "lists.parquet").to_pydict()
    expected, observed = np.zeros(10), np.zeros(10)
    for pos, marg in zip(lists["positions"], lists["position_probs"]):
        pos, marg = np.array(pos), np.array(marg)
        n_shown = int(pos.max()) + 1
        assert marg[:, :n_shown].sum(axis=0) == pytest.approx(np.ones(n_shown), abs=1e-4)
        assert (marg[:, n_shown:] == 0).all() and (marg >= 0).all() and (marg <= 1 + 1e-6).all()
        # chi-square over deciles of P(shown first): expected vs logged count of first places
        p0 = marg[:, 0]
        bins = np.minimum((p0 * 10).astype(int), 9)
        np.add.at(expected, bins, p0)
        np.add.at(observed, bins, (pos == 0).astype(float))
    keep = expected > 5
    chi2 = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert stats.chi2.sf(chi2, int(keep.sum()) - 1) > 1e-3, (observed, expected)


def test_sampler_marginals_and_draws_match_the_exact_probabilities() -> None:
    from mmrank.data.market.policy import draw_lists

    score = np.array([1.2, 0.4, 0.0, -0.7])
    k, n_rows = 2, 4000
    rankings = list(itertools.permutations(range(4), k))
    exact = np.array([list_prob(score, r, TEMPERATURE, EXPLORATION) for r in rankings])
    assert exact.sum() == pytest.approx(1.0)
    marg = np.zeros((4, k))
    for r, p in zip(rankings, exact):
        for j, i in enumerate(r):
            marg[i, j] += p
    rng = np.random.default_rng(0)
    d = draw_lists(np.tile(score, (n_rows, 1)), np.ones((n_rows, 4), bool), np.full(n_rows, k), k,
                   TEMPERATURE, EXPLORATION, 32, rng)
    # propensities: the slot probabilities of the drawn lists, exactly
    for row in range(50):
        r = tuple(int(c) for c in d.order[row])
        assert np.prod(d.propensity[row]) == pytest.approx(exact[rankings.index(r)], rel=1e-9)
    # draws: chi-square of the drawn lists against their exact probabilities
    counts = np.array([sum(tuple(o) == r for o in d.order.tolist()) for r in rankings])
    assert stats.chisquare(counts, exact * n_rows).pvalue > 1e-3
    # marginals: every row's Monte Carlo estimate within 5 standard errors (+1e-9) of the exact one
    assert (np.abs(d.marginal - marg[None]) <= 5 * d.marginal_se + 1e-9).mean() > 0.99
    assert np.abs(d.marginal.mean(axis=0) - marg).max() < 2e-3


def test_temperature_zero_without_exploration_is_the_production_order() -> None:
    from mmrank.data.market.policy import draw_lists

    score = np.array([[3.0, 2.0, 1.0, 0.5], [5.0, 1.0, 0.0, -1.0]])
    d = draw_lists(score, np.array([[1, 1, 1, 1], [1, 1, 0, 1]], bool), np.array([3, 3]), 3, 0.0, 0.0, 4,
                   np.random.default_rng(0))
    assert d.order.tolist() == [[0, 1, 2], [0, 1, 3]]
    assert (d.propensity == 1).all() and d.marginal[1, 2].tolist() == [0, 0, 0]

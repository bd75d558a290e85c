"""The behaviour model's list probabilities and the counterfactual evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrank.data.behaviour import ListInputs, draw_outcomes, list_probabilities
from mmrank.data.truth import Evaluator


def _inputs(b: int = 200, k: int = 8, seed: int = 0) -> ListInputs:
    rng = np.random.default_rng(seed)
    mask = np.ones((b, k), bool)
    mask[: b // 4, k - 3:] = False  # some shorter lists
    return ListInputs(rng.normal(0, 1, (b, k)), rng.normal(0.5, 1, (b, k)), rng.normal(0, 1, (b, k)),
                      rng.normal(3, 0.4, (b, k)), rng.normal(0, 0.6, (b, k, 4)), mask,
                      np.abs(rng.normal(1, 0.3, b)), np.full(b, 0.7), rng.normal(0, 0.5, b),
                      rng.normal(0, 0.5, b), 0.8)


def test_exact_list_probabilities_match_simulation() -> None:
    """The quadrature purchase expectation (choice among carted items) equals the frequency of draws."""
    x = _inputs()
    p = list_probabilities(x, chunk=64)
    rng = np.random.default_rng(1)
    n = 3000
    freq = {k: np.zeros_like(v) for k, v in p.items()}
    for _ in range(n):
        out = draw_outcomes(x, rng)
        assert out["purchase"].sum(axis=1).max() <= 1  # at most one purchase per list
        for k in freq:
            freq[k] += out[k]
    for k in p:
        se = np.sqrt(p[k].sum() / n)  # Poisson bound on the total's standard error
        assert abs(freq[k].sum() / n - p[k].sum()) < 4 * se, k
        assert np.all(p[k][~x.mask] == 0)


def test_lists_have_effects_a_pointwise_sort_misses() -> None:
    """Substitution: a look-alike shown right above an item lowers that item's click probability."""
    x = _inputs(b=1, k=3)
    x.mask[:] = True
    x.content[0, 1] = x.content[0, 0]          # slot 1 shows a near-duplicate of slot 0
    x.content[0, 2] = x.content[0, 0] + 5.0    # slot 2 looks different
    x.base_u[0] = 0.0
    x.log_price[0] = 3.0
    p = list_probabilities(x)["click"][0]
    exam = 1 / (1 + np.arange(3)) ** 0.7
    assert p[1] / exam[1] < 0.8 * p[2] / exam[2]


@pytest.fixture(scope="module")
def logged(tiny_market: Path) -> tuple[Evaluator, np.ndarray, list[np.ndarray], dict]:
    lists = pq.read_table(tiny_market / "data" / "lists.parquet").to_pydict()
    rows = [i for i, s in enumerate(lists["split"]) if s == "test"]
    rid = np.asarray(lists["request_id"])[rows]
    orders = [np.asarray(lists["item_ids"][i]) for i in rows]
    return Evaluator(tiny_market), rid, orders, {k: [lists[k][i] for i in rows] for k in lists}


def test_evaluator_matches_observed_clicks_on_logged_lists(logged) -> None:
    ev, rid, orders, lists = logged
    exp = ev.expected(rid, orders)
    observed = np.array([sum(c) for c in lists["clicks"]])
    se = np.sqrt(np.sum(exp["clicks"] * (1 - exp["clicks"] / np.maximum(ev.n_shown(rid), 1))))
    assert abs(observed.sum() - exp["clicks"].sum()) < 2 * se
    assert set(exp) == {"clicks", "carts", "purchases", "gmv"}
    assert all(v.shape == (len(rid),) for v in exp.values())


def test_evaluator_ranks_orders_as_it_should(logged) -> None:
    ev, rid, orders, _ = logged
    base = ev.expected(rid, orders)
    rng = np.random.default_rng(0)
    shuffled = ev.expected(rid, [rng.permutation(o) for o in orders])
    # The true purchase probability of each candidate shown alone at the top.
    best = []
    for r, o in zip(rid, orders):
        p, _, _ = ev.probabilities(np.full(len(o), r), [[i] for i in o])
        best.append(o[np.argsort(-p["purchase"][:, 0], kind="stable")])
    oracle = ev.expected(rid, best)
    assert oracle["purchases"].sum() > base["purchases"].sum() > shuffled["purchases"].sum()
    assert oracle["gmv"].sum() > shuffled["gmv"].sum()


def test_evaluator_rejects_items_that_were_not_candidates(logged) -> None:
    ev, rid, orders, _ = logged
    with pytest.raises(ValueError, match="not one of its candidates"):
        ev.expected(rid[:1], [np.array([-5])])
    with pytest.raises(ValueError, match="twice"):
        ev.expected(rid[:1], [np.array([orders[0][0], orders[0][0]])])

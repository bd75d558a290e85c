"""mmrank.eval.breakdowns: frequency groups (Figure 6b), per-group metrics, new items, relative change."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmrank.eval.breakdowns as breakdowns_module
from mmrank.eval import (
    auc,
    frequency_groups,
    gauc,
    item_frequency,
    logloss,
    metrics_by_group,
    new_item_mask,
    relative_change,
)
from mmrank.eval.metrics import MetricError

HYP = settings(max_examples=40, deadline=None, derandomize=True)


def test_docstring_examples_run():
    result = doctest.testmod(breakdowns_module)
    assert result.attempted >= 6 and result.failed == 0


def test_item_frequency_counts_training_occurrences():
    assert item_frequency([5, 5, 7, 5], [7, 5, 9, 5]).tolist() == [1, 3, 0, 3]
    assert item_frequency([], [1, 2]).tolist() == [0, 0]


def test_frequency_groups_equal_population_when_frequencies_are_distinct():
    # 800 items, item i seen i+1 times in training, each shown once in eval: exactly 100 per group
    train = np.repeat(np.arange(800), np.arange(1, 801))
    rng = np.random.default_rng(0)
    eval_items = rng.permutation(800)
    groups = frequency_groups(train, eval_items, n_groups=8)
    assert np.bincount(groups, minlength=8).tolist() == [100] * 8
    assert np.array_equal(groups, eval_items // 100)          # rarest hundred -> group 0, etc.


def test_frequency_groups_population_is_over_impressions_not_items():
    # item 0 (rarest) has 3 eval impressions, items 1..3 one each: 6 impressions, 2 groups of 3
    train = [0] + [1] * 2 + [2] * 3 + [3] * 4
    groups = frequency_groups(train, [0, 0, 0, 1, 2, 3], n_groups=2)
    assert groups.tolist() == [0, 0, 0, 1, 1, 1]


def test_frequency_groups_unseen_items_go_to_group_one_even_when_many():
    train = np.repeat(np.arange(10), np.arange(1, 11))
    eval_items = np.concatenate([np.full(50, 999), np.arange(10)])   # 50 of 60 impressions unseen
    groups = frequency_groups(train, eval_items, n_groups=8)
    assert (groups[:50] == 0).all()
    # the seen items' levels sit in the top 10/60 of the impressions: groups 7 and 8 of the paper
    assert set(groups[50:].tolist()) == {6, 7} and np.all(np.diff(groups[50:]) >= 0)


def test_frequency_groups_degenerate():
    assert frequency_groups([1, 2], [], n_groups=8).shape == (0,)
    assert frequency_groups([1, 2, 2], [1, 2, 3], n_groups=1).tolist() == [0, 0, 0]
    assert frequency_groups([], [1, 2, 3]).tolist() == [0, 0, 0]          # nothing seen in training
    with pytest.raises(MetricError, match="n_groups"):
        frequency_groups([1], [1], n_groups=0)


@HYP
@given(st.lists(st.integers(0, 30), max_size=200), st.lists(st.integers(0, 40), min_size=1,
                                                            max_size=200), st.integers(1, 10))
def test_frequency_groups_properties(train, eval_items, n_groups):
    train, eval_items = np.array(train, dtype=np.int64), np.array(eval_items, dtype=np.int64)
    groups = frequency_groups(train, eval_items, n_groups)
    freq = item_frequency(train, eval_items)
    assert groups.shape == eval_items.shape
    assert groups.min() >= 0 and groups.max() < n_groups
    assert (groups[freq == 0] == 0).all()                             # unseen -> group 1 of the paper
    order = np.argsort(freq, kind="stable")                           # non-decreasing in frequency
    assert np.all(np.diff(groups[order]) >= 0)
    for f in np.unique(freq):                                         # same frequency, same group
        assert len(set(groups[freq == f].tolist())) == 1
    # a group holds its quantile block (1/n_groups of the rows) plus at most half a frequency level
    # at each end
    largest_level = np.bincount(freq).max()
    assert np.bincount(groups).max() <= math.ceil(len(eval_items) / n_groups) + largest_level


def random_ctr(seed, n=600):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(np.round(rng.uniform(0, 1, n) * 0.6 + 0.3 * y, 1), 0.01, 0.99)
    users = rng.integers(0, 40, n)
    return rng, y, p, users


def test_metrics_by_group_matches_direct_metrics_per_group():
    rng, y, p, users = random_ctr(0)
    gi = rng.integers(0, 5, y.shape[0])
    rows = metrics_by_group(y, p, users, gi, 5, with_logloss=True)
    assert [r["group"] for r in rows] == [1, 2, 3, 4, 5]
    for g, row in enumerate(rows):
        m = gi == g
        assert row["n"] == int(m.sum()) and row["n_pos"] == int(y[m].sum())
        assert row["auc"] == auc(y[m], p[m])
        assert row["gauc"] == gauc(y[m], p[m], users[m])
        assert row["logloss"] == logloss(y[m], p[m])
    json.dumps(rows)                                                   # plain Python numbers


def test_metrics_by_group_gives_nan_not_errors_when_undefined():
    y = np.array([1, 0, 1, 1, 1, 0])
    s = np.array([0.9, 0.1, 0.8, 0.7, 0.6, 0.4])
    users = np.array([1, 1, 2, 2, 3, 4])
    gi = np.array([0, 0, 1, 1, 2, 2])
    rows = metrics_by_group(y, s, users, gi, 4)
    assert rows[0]["auc"] == 1.0 and rows[0]["gauc"] == 1.0
    assert math.isnan(rows[1]["auc"]) and math.isnan(rows[1]["gauc"])     # one class in the group
    assert rows[2]["auc"] == 1.0 and math.isnan(rows[2]["gauc"])          # no two-class user
    assert rows[3]["n"] == 0 and math.isnan(rows[3]["auc"]) and math.isnan(rows[3]["gauc"])
    assert "logloss" not in rows[0]


def test_metrics_by_group_with_frequency_groups_end_to_end():
    rng, y, p, users = random_ctr(1, n=800)
    train_items = rng.zipf(1.6, 5000) % 300
    eval_items = rng.zipf(1.6, 800) % 400
    gi = frequency_groups(train_items, eval_items, n_groups=8)
    rows = metrics_by_group(y, p, users, gi, 8)
    assert sum(r["n"] for r in rows) == 800
    assert len(rows) == 8


def test_metrics_by_group_rejects_bad_input():
    with pytest.raises(MetricError, match=r"group_index: expected integers in \[0, 2\)"):
        metrics_by_group([1, 0], [0.5, 0.2], [1, 1], [0, 2], 2)
    with pytest.raises(MetricError, match="same length"):
        metrics_by_group([1, 0], [0.5], [1, 1], [0, 1], 2)
    with pytest.raises(MetricError, match="label 0 or 1"):                 # bad values still raise
        metrics_by_group([1, 3], [0.5, 0.2], [1, 1], [0, 0], 1)


def test_new_item_mask_is_strictly_after():
    created = np.array([0, 99, 100, 101, 500], dtype=np.int64)
    assert new_item_mask(created, 100).tolist() == [False, False, False, True, True]


def test_relative_change():
    assert relative_change(0.7575, 0.75) == pytest.approx(0.01, abs=1e-12)
    assert relative_change(0.7425, 0.75) == pytest.approx(-0.01, abs=1e-12)
    assert relative_change(0.7425, 0.75, absolute=True) == pytest.approx(0.01, abs=1e-12)
    assert isinstance(relative_change(1, 2), float)
    out = relative_change(np.array([0.3, 0.5, 1.0]), np.array([0.4, 0.0, -2.0]))
    assert out[0] == pytest.approx(-0.25) and math.isnan(out[1]) and out[2] == pytest.approx(1.5)

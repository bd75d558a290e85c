"""mmrank.eval.metrics against scikit-learn, slow obvious implementations and hand-worked cases."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

import mmrank.eval.metrics as metrics_module
from mmrank.errors import MMRankError
from mmrank.eval import acc_at_n, auc, gauc, logloss, ndcg_at_k
from mmrank.eval.metrics import (MetricError, UndefinedMetricError, expected_hits, group_auc,
                                  retrieval_ranks)

SEEDS = range(40)
HYP = settings(max_examples=40, deadline=None, derandomize=True)


# ------------------------------------------------------------------------------------ slow references

def slow_pairwise_auc(y, s):
    """Count every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
    pos = [si for yi, si in zip(y, s) if yi == 1]
    neg = [si for yi, si in zip(y, s) if yi == 0]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def slow_gauc(y, s, users):
    """Loop over users, sklearn AUC per two-class user, weighted by the user's impressions."""
    num = den = 0.0
    for u in sorted(set(users.tolist())):
        m = users == u
        if len(set(y[m].tolist())) < 2:
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
    return num / den


def slow_acc_at_n(q, p, n):
    """Eq. 6 with random tie-breaking, by enumeration: S is the set of distinct positive vectors; for
    every tie-breaking order of S (all |S|! of them), rank S by (score descending, that order) and
    count a hit when p_i is among the first n; the mean over orders, then over queries."""
    members = sorted({tuple(row) for row in p.tolist()})
    perms = list(itertools.permutations(range(len(members))))
    total = 0.0
    for qi, pi in zip(q.tolist(), p.tolist()):
        score = [float(np.dot(qi, m)) for m in members]
        own = members.index(tuple(pi))
        hits = 0
        for perm in perms:
            order = sorted(range(len(members)), key=lambda j: (-score[j], perm[j]))
            hits += order.index(own) < n
        total += hits / len(perms)
    return total / len(q)


def random_case(seed, n=None, ties=True):
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(2, 300))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1                                      # both classes present
    s = rng.normal(size=n) + 0.7 * y
    if ties:
        s = np.round(s, 1)
    return rng, y, s


def test_docstring_examples_run():
    result = doctest.testmod(metrics_module)
    assert result.attempted >= 8 and result.failed == 0


# ---------------------------------------------------------------------------------------------- AUC

@pytest.mark.parametrize("ties", [True, False])
def test_auc_matches_sklearn_on_random_inputs(ties):
    for seed in SEEDS:
        _, y, s = random_case(seed, ties=ties)
        assert abs(auc(y, s) - roc_auc_score(y, s)) < 1e-9, seed


def test_auc_matches_sklearn_on_heavy_ties_and_large_input():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200_000)
    s = rng.integers(0, 3, 200_000).astype(float) + 0.5 * y   # 6 distinct scores only
    assert abs(auc(y, s) - roc_auc_score(y, s)) < 1e-9


def test_auc_matches_pairwise_counting():
    for seed in range(15):
        _, y, s = random_case(seed, n=60)
        assert abs(auc(y, s) - slow_pairwise_auc(y, s)) < 1e-12


def test_auc_hand_worked():
    # pairs (pos, neg): (0.35,0.1) win, (0.35,0.4) loss, (0.8,0.1) win, (0.8,0.4) win -> 3/4
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a tied pair counts 1/2: (0.5,0.5) 1/2, (0.5,0.2) 1, (0.9,0.5) 1, (0.9,0.2) 1 -> 3.5/4
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
    assert auc([1, 0], [0.0, 0.0]) == 0.5
    assert auc([True, False, False], [3, 1, 2]) == 1.0
    assert auc([1, 0, 0], [-np.inf, 1, np.inf]) == 0.0


def test_auc_one_class_raises_clearly():
    for y in ([1, 1, 1], [0, 0], [1]):
        with pytest.raises(UndefinedMetricError, match="only one class"):
            auc(y, np.arange(len(y)))
    with pytest.raises(ValueError):           # it is a ValueError ...
        auc([0, 0], [1, 2])
    with pytest.raises(MMRankError):           # ... and an MMRankError (one-line CLI error)
        auc([0, 0], [1, 2])


def test_auc_rejects_bad_input():
    with pytest.raises(MetricError, match="row 2: expected a label 0 or 1"):
        auc([0, 1, 2], [1, 2, 3])
    with pytest.raises(MetricError, match="row 1: NaN"):
        auc([0, 1], [1, np.nan])
    with pytest.raises(MetricError, match="expected 3 values"):
        auc([0, 1, 1], [1, 2])
    with pytest.raises(MetricError, match="1-D"):
        auc([[0, 1]], [[1, 2]])


@HYP
@given(st.lists(st.tuples(st.booleans(), st.integers(-20, 20)), min_size=2, max_size=60))
def test_auc_properties(rows):
    y = np.array([r[0] for r in rows], dtype=int)
    s = np.array([r[1] for r in rows], dtype=float)
    if y.min() == y.max():
        with pytest.raises(UndefinedMetricError):
            auc(y, s)
        return
    a = auc(y, s)
    assert 0.0 <= a <= 1.0
    assert abs(a - slow_pairwise_auc(y, s)) < 1e-12
    # invariant under strictly increasing transforms of the scores
    assert abs(auc(y, s ** 3 + 5 * s - 7) - a) < 1e-12
    assert abs(auc(y, np.exp(s / 4)) - a) < 1e-12
    # reversing the scores, or swapping the classes, gives 1 - AUC
    assert abs(auc(y, -s) - (1 - a)) < 1e-12
    assert abs(auc(1 - y, s) - (1 - a)) < 1e-12


# --------------------------------------------------------------------------------------------- GAUC

def test_gauc_matches_per_user_loop_on_random_inputs():
    for seed in SEEDS:
        rng, y, s = random_case(seed, n=400)
        users = rng.integers(0, int(rng.integers(1, 60)), 400)   # many single-class users
        assert abs(gauc(y, s, users) - slow_gauc(y, s, users)) < 1e-9, seed


def test_gauc_hand_worked():
    labels = [1, 0, 0, 1, 0, 0, 0, 1]
    scores = [.9, .2, .5, .1, .3, .2, .0, .7]
    users = [1, 1, 1, 2, 2, 2, 2, 3]
    # user 1: AUC 1 over 3 impressions; user 2: the positive 0.1 beats only 0.0 -> 1/3, 4 impressions;
    # user 3 has a single class and is skipped (not even counted in the weights)
    assert gauc(labels, scores, users) == pytest.approx((3 * 1.0 + 4 / 3) / 7, abs=1e-15)
    # weights are impressions, not positives or pairs: a different weighting gives a different value
    assert gauc(labels, scores, users) != pytest.approx((1.0 + 1 / 3) / 2)


def test_gauc_single_user_equals_auc_and_keys_of_any_type():
    _, y, s = random_case(3, n=100)
    assert gauc(y, s, np.zeros(100, dtype=int)) == pytest.approx(auc(y, s), abs=1e-15)
    users = np.array(["u%d" % (i % 7) for i in range(100)])
    assert abs(gauc(y, s, users) - slow_gauc(y, s, users)) < 1e-9
    assert abs(gauc(y, s, users.astype(object)) - slow_gauc(y, s, users)) < 1e-9


def test_gauc_undefined_raises():
    with pytest.raises(UndefinedMetricError, match="no group"):
        gauc([1, 1, 1], [1, 2, 3], [0, 1, 2])               # all one class
    with pytest.raises(UndefinedMetricError, match="no group"):
        gauc([1, 0, 1, 0], [1, 2, 3, 4], [0, 1, 2, 3])       # both classes, but no two-class user
    with pytest.raises(UndefinedMetricError):
        gauc([], [], [])
    with pytest.raises(MetricError, match="groups: expected 2"):
        gauc([1, 0], [1, 2], [0])


def test_group_auc_reports_each_group():
    r = group_auc([1, 0, 1, 1, 0, 1], [0.9, 0.1, 0.3, 0.2, 0.5, 0.5], [7, 7, 8, 8, 9, 9])
    assert r.groups.tolist() == [7, 8, 9]
    assert r.n.tolist() == [2, 2, 2] and r.n_pos.tolist() == [1, 2, 1]
    assert r.auc[0] == 1.0 and math.isnan(r.auc[1]) and r.auc[2] == 0.5


@HYP
@given(st.lists(st.tuples(st.booleans(), st.integers(-5, 5), st.integers(0, 6)), min_size=1,
                max_size=80), st.randoms(use_true_random=False))
def test_gauc_properties(rows, rnd):
    y = np.array([r[0] for r in rows], dtype=int)
    s = np.array([r[1] for r in rows], dtype=float)
    u = np.array([r[2] for r in rows])
    try:
        g = gauc(y, s, u)
    except UndefinedMetricError:
        assert all(len(set(y[u == k].tolist())) < 2 for k in set(u.tolist()))
        return
    assert abs(g - slow_gauc(y, s, u)) < 1e-12
    perm = np.array(rnd.sample(range(len(rows)), len(rows)))      # row order does not matter
    assert abs(gauc(y[perm], s[perm], u[perm]) - g) < 1e-12
    assert abs(gauc(y, 2 * s + 1, u) - g) < 1e-12                  # monotone transform


# ------------------------------------------------------------------------------------------ LogLoss

def test_logloss_matches_sklearn_on_random_inputs():
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 300))
        y = rng.integers(0, 2, n)
        p = np.round(rng.uniform(0.01, 0.99, n), 2)            # ties, none clipped
        assert abs(logloss(y, p) - log_loss(y, p, labels=[0, 1])) < 1e-9, seed


def test_logloss_clips_like_sklearn():
    y = np.array([1, 0, 1, 0, 1])
    p = np.array([0.0, 1.0, 1.0, 0.0, 0.5])
    machine_eps = np.finfo(np.float64).eps                     # what sklearn >= 1.5 clips with
    assert abs(logloss(y, p, eps=machine_eps) - log_loss(y, p)) < 1e-9
    # default eps = 1e-7: a saturated wrong prediction costs -log(1e-7)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7), rel=1e-12)
    assert logloss([0], [1.0]) == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert logloss([1], [1.0]) == pytest.approx(-math.log1p(-1e-7), rel=1e-9)


def test_logloss_hand_worked_and_errors():
    assert logloss([1, 0, 1], [0.9, 0.2, 0.6]) == pytest.approx(
        -(math.log(0.9) + math.log(0.8) + math.log(0.6)) / 3, abs=1e-15)
    assert logloss([0, 1], [0.5, 0.5]) == pytest.approx(math.log(2), abs=1e-15)
    with pytest.raises(MetricError, match=r"row 1: expected a probability in \[0, 1\]"):
        logloss([0, 1], [0.5, 1.5])
    with pytest.raises(MetricError, match="eps"):
        logloss([0, 1], [0.5, 0.5], eps=0.7)
    with pytest.raises(UndefinedMetricError):
        logloss([], [])


# --------------------------------------------------------------------------------------------- NDCG

def test_ndcg_matches_sklearn_one_list_with_ties():
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 40))
        rel = rng.integers(0, 4, n).astype(float)
        rel[rng.integers(0, n)] = 1.0                           # at least one relevant item
        s = np.round(rng.normal(size=n), 1)                      # heavy ties
        for k in (1, 3, 5, 10, n, n + 3, None):
            ours = ndcg_at_k(rel, s, k)
            ref = ndcg_score(rel[None], s[None], k=k)
            assert abs(ours - ref) < 1e-9, (seed, k)


def test_ndcg_matches_sklearn_batched_with_ties_and_irrelevant_lists():
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        b, n = int(rng.integers(1, 30)), int(rng.integers(2, 25))
        rel = (rng.random((b, n)) < 0.2).astype(float) * rng.integers(1, 3, (b, n))
        s = rng.integers(0, 4, (b, n)).astype(float)             # very heavy ties
        for k in (1, 2, 5, None):
            ours = ndcg_at_k(rel, s, k)
            ref = ndcg_score(rel, s, k=k)                         # mean over lists, 0 if irrelevant
            assert abs(ours - ref) < 1e-9, (seed, k)


def test_ndcg_hand_worked():
    assert ndcg_at_k([3, 2, 0, 1], [0.9, 0.8, 0.1, 0.3], k=3) == pytest.approx(1.0, abs=1e-15)
    # relevant item ranked 2nd of 3: DCG = 1/log2(3), IDCG = 1
    assert ndcg_at_k([0, 1, 0], [3, 2, 1]) == pytest.approx(1 / math.log2(3), abs=1e-15)
    assert ndcg_at_k([0, 1, 0], [3, 2, 1], k=1) == 0.0
    # the relevant item tied with the top item: half its gain at each of positions 1 and 2
    assert ndcg_at_k([0, 1, 0], [2, 2, 1]) == pytest.approx(0.5 * (1 + 1 / math.log2(3)), abs=1e-15)
    # tie straddling the cut-off k = 1: mean gain 1/2 times the discount of position 1 only
    assert ndcg_at_k([0, 1, 0], [2, 2, 1], k=1) == pytest.approx(0.5, abs=1e-15)
    assert ndcg_at_k([0, 0, 0], [1, 2, 3]) == 0.0                # no relevant item: 0, as sklearn


def test_ndcg_mask_scores_each_row_as_its_shorter_list():
    rng = np.random.default_rng(7)
    b, n = 12, 9
    rel = rng.integers(0, 3, (b, n)).astype(float)
    s = np.round(rng.normal(size=(b, n)), 1)
    lengths = rng.integers(1, n + 1, b)
    mask = np.arange(n)[None, :] < lengths[:, None]
    # garbage in the padding must not matter
    rel_pad = np.where(mask, rel, 99.0)
    s_pad = np.where(mask, s, np.nan)
    for k in (2, 5, None):
        expected = np.mean([ndcg_at_k(rel[i, :lengths[i]], s[i, :lengths[i]], k) for i in range(b)])
        assert abs(ndcg_at_k(rel_pad, s_pad, k, mask=mask) - expected) < 1e-12


def test_ndcg_rejects_bad_input():
    with pytest.raises(MetricError, match="expected shape"):
        ndcg_at_k([1, 0], [1, 2, 3])
    with pytest.raises(MetricError, match="k must be"):
        ndcg_at_k([1, 0], [1, 2], k=0)
    with pytest.raises(MetricError, match=">= 0"):
        ndcg_at_k([1, -1], [1, 2])
    with pytest.raises(MetricError, match="non-finite"):
        ndcg_at_k([1, 0], [1, np.nan])
    with pytest.raises(MetricError, match="1-D or 2-D"):
        ndcg_at_k(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


@HYP
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-3, 3)), min_size=2, max_size=30),
       st.integers(1, 35))
def test_ndcg_properties(rows, k):
    rel = np.array([r[0] for r in rows], dtype=float)
    s = np.array([r[1] for r in rows], dtype=float)
    v = ndcg_at_k(rel, s, k)
    assert 0.0 <= v <= 1.0 + 1e-12
    if rel.any():
        assert abs(v - ndcg_score(rel[None], s[None], k=k)) < 1e-9
        assert ndcg_at_k(rel, rel, k) == pytest.approx(1.0, abs=1e-12)   # ideal order scores 1


# -------------------------------------------------------------------------------------------- Acc@N

def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_acc_at_n_matches_brute_force_over_tie_orders_with_duplicates():
    for seed in range(12):
        rng = np.random.default_rng(seed)
        d_pairs = int(rng.integers(2, 12))
        items = rng.integers(-1, 2, size=(int(rng.integers(1, 7)), 2)).astype(float)  # |S| <= 6: ties
        p = items[rng.integers(0, items.shape[0], d_pairs)]                          # duplicate positives
        q = rng.integers(-1, 2, size=(d_pairs, 2)).astype(float)
        for n in (1, 2, 3, 5):
            assert acc_at_n(q, p, n) == pytest.approx(slow_acc_at_n(q, p, n), abs=1e-12), (seed, n)


def test_acc_at_n_hand_worked():
    p = np.eye(3)
    q = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]])
    assert retrieval_ranks(q, p).better.tolist() == [0, 1, 0]
    assert retrieval_ranks(q, p).tied.tolist() == [0, 0, 0]
    assert acc_at_n(q, p, 1) == pytest.approx(2 / 3)
    assert acc_at_n(q, p, [1, 2, 3]) == {1: 2 / 3, 2: 1.0, 3: 1.0}
    # a duplicate positive is the same member of S: neither better than p_i nor tied with it
    p_dup = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert acc_at_n(p_dup, p_dup, 1) == 1.0
    assert retrieval_ranks(p_dup, p_dup).tied.tolist() == [0, 0, 0]
    # a different vector with exactly the same score is a tie: p_i comes first half of the time
    q2, p2 = np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 1.0], [1.0, -1.0]])
    r = retrieval_ranks(q2, p2)
    assert r.better.tolist() == [0, 0] and r.tied.tolist() == [1, 1]
    assert acc_at_n(q2, p2, 1) == 0.5


def test_acc_at_n_hand_worked_ties():
    # Query 0's positive (1, 0) scores 1; (2, 0) scores 2 (better); (1, 5) and (1, -5) score 1 (tied).
    # Its rank is 1 + U, U uniform on {0, 1, 2}: P(rank < N) = 0, 1/3, 2/3, 1 for N = 1..4. The other
    # three queries find their positive first, with no tie.
    p = np.array([[1.0, 0.0], [1.0, 5.0], [1.0, -5.0], [2.0, 0.0]])
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    r = retrieval_ranks(q, p)
    assert r.better.tolist() == [1, 0, 0, 0] and r.tied.tolist() == [2, 0, 0, 0]
    got = acc_at_n(q, p, [1, 2, 3, 4])
    want = {1: 3 / 4, 2: (1 / 3 + 3) / 4, 3: (2 / 3 + 3) / 4, 4: 1.0}
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-15 for k in want)
    # counting the ties in the item's favour would give query 0 a hit at N = 2 (Acc@2 = 1.0)
    assert got[2] < 1.0
    # a scorer that ties everything gets N / |S|, not 1
    assert acc_at_n(np.zeros((4, 2)), p, [1, 3]) == {1: 0.25, 3: 0.75}
    assert acc_at_n(q, p, 2) == pytest.approx(slow_acc_at_n(q, p, 2), abs=1e-15)


def test_expected_hits_closed_form():
    assert expected_hits([1, 0, 3, 2], [2, 0, 0, 3], 2).tolist() == [1 / 3, 1.0, 0.0, 0.0]
    assert expected_hits([0], [3], 1).tolist() == [0.25]
    assert expected_hits([0, 5], [3, 4], 9).tolist() == [1.0, 0.8]     # ranks 5..9: four of five < 9
    assert expected_hits([0, 5], [3, 4], 10).tolist() == [1.0, 1.0]


def test_acc_at_n_equal_queries_and_distinct_unit_positives_is_one():
    rng = np.random.default_rng(0)
    p = unit_rows(rng, 500, 16).astype(np.float32)
    assert acc_at_n(p, p, 1) == 1.0


def test_acc_at_n_chunking_and_dtype_do_not_change_ranks():
    rng = np.random.default_rng(1)
    q, p = unit_rows(rng, 300, 8), unit_rows(rng, 300, 8)
    q = q + 0.5 * p
    full = retrieval_ranks(q, p)
    for other in (retrieval_ranks(q, p, chunk_bytes=1),                         # one query per chunk
                  retrieval_ranks(q, p, chunk_bytes=300 * 8 * 7),
                  retrieval_ranks(q.astype(np.float32), p.astype(np.float32))):
        assert np.array_equal(other.better, full.better) and np.array_equal(other.tied, full.tied)
    assert 0 < acc_at_n(q, p, 1) < 1


@HYP
@given(st.integers(0, 10_000), st.integers(2, 60), st.integers(1, 6))
def test_acc_at_n_monotone_in_n(seed, d_pairs, dim):
    rng = np.random.default_rng(seed)
    q = np.round(rng.normal(size=(d_pairs, dim)), 1)
    p = np.round(rng.normal(size=(d_pairs, dim)), 1)
    accs = acc_at_n(q, p, list(range(1, d_pairs + 2)))
    values = [accs[n] for n in sorted(accs)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[-1] == 1.0                                   # N >= |S| finds everything


def test_acc_at_n_rejects_bad_input():
    p = np.eye(3)
    with pytest.raises(MetricError, match="positive integer"):
        acc_at_n(p, p, 0)
    with pytest.raises(MetricError, match="positive integer"):
        acc_at_n(p, p, [1, 2.5])
    with pytest.raises(MetricError, match="same shape"):
        acc_at_n(p, p[:2], 1)
    with pytest.raises(MetricError, match="2-D"):
        acc_at_n(p[0], p[0], 1)
    bad = p.copy()
    bad[1, 1] = np.nan
    with pytest.raises(MetricError, match="row 1: non-finite"):
        acc_at_n(p, bad, 1)

"""Ranking and classification metrics: AUC, GAUC, LogLoss, NDCG@k and Acc@N.

One implementation of each, vectorised with NumPy, tested against scikit-learn and against slow
obvious implementations (``tests/test_eval_metrics.py``). The conventions (also in ``docs/metrics.md``):

* ``auc``: ROC AUC from average ranks (Mann-Whitney U); a tied (positive, negative) pair counts 1/2,
  exactly as ``sklearn.metrics.roc_auc_score``.
* ``gauc``: group (user) AUC, each group's AUC weighted by its number of impressions (rows), groups
  with a single class skipped, as FuxiCTR's ``gAUC`` (and the GAUC of DIN and of the CIKM'24 paper,
  Sec. 6.1.4). One sort over all rows, no Python loop over groups.
* ``logloss``: mean binary cross-entropy in nats, probabilities clipped to ``[eps, 1 - eps]``
  (``eps = 1e-7``), as ``sklearn.metrics.log_loss`` up to the clipping bound.
* ``ndcg_at_k``: linear-gain NDCG@k (gain = relevance, not 2^rel - 1), ties in scores averaged over
  their orderings, exactly as ``sklearn.metrics.ndcg_score(..., ignore_ties=False)``; a list with no
  relevant item scores 0.
* ``acc_at_n``: Acc@N of Eq. 6 of the CIKM'24 paper (retrieval of each query's positive among the set
  of all positives of the test set), ties broken uniformly at random: each query counts its expected
  hit, computed in closed form (``expected_hits``), so a tie neither helps nor hurts on average.

Undefined values (AUC with one class, GAUC with no two-class group) raise ``UndefinedMetricError``, a
``MetricError``; bad inputs raise ``MetricError``. Both are ``ValueError`` and ``MMRankError`` (the CLI
prints them as one line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mmrank.errors import MMRankError

__all__ = [
    "MetricError", "UndefinedMetricError", "GroupAUC", "auc", "gauc", "group_auc", "logloss",
    "ndcg_at_k", "acc_at_n", "retrieval_ranks", "RetrievalRanks", "expected_hits",
]


class MetricError(MMRankError, ValueError):
    """An input of the wrong shape or values, or a metric undefined for its input."""


class UndefinedMetricError(MetricError):
    """The metric is undefined for this input (one class only, no two-class group, no rows)."""


# --------------------------------------------------------------------------------------------------
# input checks


def _as_1d(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise MetricError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


def _binary_labels(labels: object, name: str = "labels") -> np.ndarray:
    """``labels`` as float64 0/1, shape (N,); raises unless every value is 0 or 1 (or bool)."""
    y = _as_1d(labels, name)
    if y.dtype == bool:
        return y.astype(np.float64)
    if not np.issubdtype(y.dtype, np.number):
        raise MetricError(f"{name}: expected numeric 0/1 labels, got dtype {y.dtype}")
    y = y.astype(np.float64)
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MetricError(f"{name}: row {i}: expected a label 0 or 1, got {y[i]!r}")
    return y


def _scores(scores: object, n: int, name: str = "scores") -> np.ndarray:
    s = _as_1d(scores, name)
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise MetricError(f"{name}: expected real numbers, got dtype {s.dtype}")
    if s.shape[0] != n:
        raise MetricError(f"{name}: expected {n} values (one per label), got {s.shape[0]}")
    s = s.astype(np.float64)
    nan = np.isnan(s)
    if nan.any():
        raise MetricError(f"{name}: row {int(np.flatnonzero(nan)[0])}: NaN score")
    return s


# --------------------------------------------------------------------------------------------------
# AUC and GAUC: one kernel


class GroupAUC(NamedTuple):
    """Per-group AUCs, one entry per distinct group (groups in sorted order).

    Attributes:
        groups: (G,) the distinct group keys, sorted.
        auc: (G,) float64, the group's AUC; NaN where the group has a single class.
        n: (G,) int64, the group's number of impressions (rows).
        n_pos: (G,) int64, the group's number of positives.
    """

    groups: np.ndarray
    auc: np.ndarray
    n: np.ndarray
    n_pos: np.ndarray


def _grouped_auc(y: np.ndarray, s: np.ndarray, g: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """AUC of each group from average ranks, with a single sort over all rows.

    Within a group, AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), where R_pos is the sum of the
    positives' 1-based ranks by ascending score, tied scores sharing their average rank (so a tied
    positive/negative pair counts 1/2, as in scikit-learn). The ranks are half-integers and their sums
    stay exact in float64 up to ~2^53.

    Args:
        y: (N,) float64 0/1 labels, N >= 1.
        s: (N,) float64 scores, no NaN.
        g: (N,) group keys (any sortable dtype), or None for a single group.

    Returns:
        (group_starts (G,), auc (G,) with NaN where single-class, n (G,), n_pos (G,), order (N,))
    """
    n_rows = y.shape[0]
    if g is None:
        order = np.argsort(s, kind="stable")
        same_group = np.ones(max(n_rows - 1, 0), dtype=bool)
    else:
        order = np.lexsort((s, g))          # primary key: group, secondary: score (ascending)
        gs = g[order]
        same_group = gs[1:] == gs[:-1]
    ss, ys = s[order], y[order]
    # A run is a maximal block of equal (group, score); a group is a maximal block of equal group.
    new_group = np.concatenate(([True], ~same_group))
    new_run = np.concatenate(([True], ~same_group | (ss[1:] != ss[:-1])))
    group_starts = np.flatnonzero(new_group)
    run_starts = np.flatnonzero(new_run)
    run_ends = np.append(run_starts[1:], n_rows)           # exclusive
    run_id = np.cumsum(new_run) - 1
    group_id = np.cumsum(new_group) - 1
    avg_pos = (run_starts + 1 + run_ends) / 2.0            # mean of 1-based positions start+1..end
    rank_in_group = avg_pos[run_id] - group_starts[group_id]
    n = np.diff(np.append(group_starts, n_rows))
    n_pos = np.add.reduceat(ys, group_starts)
    r_pos = np.add.reduceat(rank_in_group * ys, group_starts)
    n_neg = n - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    out = np.full(group_starts.shape[0], np.nan)
    out[valid] = (r_pos[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    return group_starts, out, n.astype(np.int64), n_pos.astype(np.int64), order


def auc(labels: object, scores: object) -> float:
    """ROC AUC of ``scores`` for binary ``labels``; ties count 1/2 (equals ``sklearn.roc_auc_score``).

    Args:
        labels: (N,) 0/1 (or bool) labels.
        scores: (N,) real scores (logits or probabilities; only their order matters). No NaN.

    Returns:
        The probability that a random positive scores above a random negative (ties count 1/2).

    Raises:
        UndefinedMetricError (a MetricError, a ValueError): if only one class is present (or no rows).
        MetricError: on bad shapes or values (labels other than 0/1, NaN scores).

    Example::

        >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
        >>> auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])   # the tied pair counts 1/2
        0.875
    """
    y = _binary_labels(labels)
    s = _scores(scores, y.shape[0])
    if y.shape[0] == 0:
        raise UndefinedMetricError("auc: no rows")
    _, out, _, n_pos, _ = _grouped_auc(y, s, None)
    if np.isnan(out[0]):
        cls = "positive" if n_pos[0] > 0 else "negative"
        raise UndefinedMetricError(f"auc: only one class present (all {y.shape[0]} labels are "
                                   f"{cls}); AUC is undefined")
    return float(out[0])


def group_auc(labels: object, scores: object, groups: object) -> GroupAUC:
    """The AUC of every group (user), vectorised: one sort over all rows, no loop over groups.

    Args:
        labels: (N,) 0/1 labels.
        scores: (N,) real scores.
        groups: (N,) group keys (user ids; any sortable dtype).

    Returns:
        ``GroupAUC(groups (G,), auc (G,), n (G,), n_pos (G,))``; ``auc`` is NaN for single-class groups.

    Example::

        >>> r = group_auc([1, 0, 1, 1], [0.9, 0.1, 0.3, 0.2], [7, 7, 8, 8])
        >>> r.groups.tolist(), r.auc.tolist(), r.n.tolist()
        ([7, 8], [1.0, nan], [2, 2])
    """
    y = _binary_labels(labels)
    s = _scores(scores, y.shape[0])
    g = _as_1d(groups, "groups")
    if g.shape[0] != y.shape[0]:
        raise MetricError(f"groups: expected {y.shape[0]} values (one per label), got {g.shape[0]}")
    if y.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return GroupAUC(g[:0], np.zeros(0), empty, empty)
    starts, out, n, n_pos, order = _grouped_auc(y, s, g)
    return GroupAUC(g[order][starts], out, n, n_pos)


def gauc(labels: object, scores: object, groups: object) -> float:
    """Group AUC: each group's AUC weighted by its impressions, single-class groups skipped (as FuxiCTR).

    GAUC = sum_u n_u AUC_u / sum_u n_u over the groups u (users) that have both a positive and a
    negative, n_u being the group's number of rows (impressions). Groups with one class have no AUC
    and are left out of both sums (TorchRec got this wrong several times: PRs 2614/2618/2619/2672).

    Args:
        labels: (N,) 0/1 labels.
        scores: (N,) real scores.
        groups: (N,) group keys, usually user ids.

    Returns:
        The impression-weighted mean of the groups' AUCs.

    Raises:
        UndefinedMetricError (a MetricError, a ValueError): if no group has both classes (or no rows).
        MetricError: on bad shapes or values.
        ``mmrank.eval.metrics_by_group`` turns that into NaN.

    Example::

        >>> labels = [1, 0, 0,   1, 0, 0, 0,   1]
        >>> scores = [.9, .2, .5, .1, .3, .2, .0, .7]
        >>> users  = [1, 1, 1,   2, 2, 2, 2,   3]
        >>> round(gauc(labels, scores, users), 6)     # (3 * 1.0 + 4 * (1/3)) / 7; user 3 skipped
        0.619048
    """
    r = group_auc(labels, scores, groups)
    valid = ~np.isnan(r.auc)
    if not valid.any():
        raise UndefinedMetricError(f"gauc: no group (of {r.groups.shape[0]}) has both a positive and "
                                   "a negative; GAUC is undefined")
    w = r.n[valid].astype(np.float64)
    return float(np.dot(w, r.auc[valid]) / w.sum())


# --------------------------------------------------------------------------------------------------
# LogLoss


def logloss(labels: object, probs: object, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[eps, 1 - eps]`` (as sklearn's log_loss).

    loss = -mean(y log p + (1 - y) log(1 - p)). scikit-learn >= 1.5 clips with the float dtype's
    machine epsilon; pass ``eps=np.finfo(np.float64).eps`` to reproduce it on saturated probabilities.

    Args:
        labels: (N,) 0/1 labels.
        probs: (N,) predicted probabilities of the positive class, each in [0, 1].
        eps: clipping bound, 0 <= eps < 0.5.

    Returns:
        The mean loss in nats.

    Example::

        >>> round(logloss([1, 0, 1], [0.9, 0.2, 0.6]), 6)
        0.279777
    """
    y = _binary_labels(labels)
    p = _scores(probs, y.shape[0], "probs")
    if y.shape[0] == 0:
        raise UndefinedMetricError("logloss: no rows")
    if not 0 <= eps < 0.5:
        raise MetricError(f"logloss: eps must be in [0, 0.5), got {eps!r}")
    out = (p < 0) | (p > 1)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise MetricError(f"probs: row {i}: expected a probability in [0, 1], got {p[i]!r}")
    p = np.clip(p, eps, 1 - eps)
    with np.errstate(divide="ignore"):  # eps = 0 with saturated p gives inf, which is the true loss
        loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(loss.mean())


# --------------------------------------------------------------------------------------------------
# NDCG@k


def ndcg_at_k(relevance: object, scores: object, k: int | None = None,
              mask: object | None = None) -> float:
    """NDCG@k with linear gains, tied scores averaged over their orderings (as sklearn's ndcg_score).

    DCG@k = sum_{r < k} rel_(r) / log2(r + 2) over the list sorted by descending score; within a block
    of tied scores every item gets the block's mean relevance (the mean over all orderings of the tie,
    McSherry & Najork 2008; ``sklearn.metrics.ndcg_score(ignore_ties=False)``). NDCG@k = DCG@k /
    IDCG@k, and 0 for a list with no relevant item (as sklearn).

    Args:
        relevance: (L,) one list or (B, L) B lists, non-negative graded relevance (clicks, 0/1, ...).
        scores: same shape, the model's scores.
        k: cut-off; None means the whole list.
        mask: optional (B, L) / (L,) bool, True for real entries: lists of different lengths padded to L.
            Padding is ignored (each row is scored as its own shorter list).

    Returns:
        The NDCG@k of the list, or the mean over the B lists.

    Example::

        >>> round(ndcg_at_k([3, 2, 0, 1], [0.9, 0.8, 0.1, 0.3], k=3), 6)    # perfect order
        1.0
        >>> round(ndcg_at_k([[1, 0, 0], [0, 0, 1]], [[.5, .5, .1], [.9, .2, .1]]), 6)
        0.657732
    """
    rel = np.asarray(relevance)
    sc = np.asarray(scores)
    if rel.ndim not in (1, 2):
        raise MetricError(f"relevance: expected a 1-D or 2-D array, got shape {rel.shape}")
    if sc.shape != rel.shape:
        raise MetricError(f"scores: expected shape {rel.shape} (as relevance), got {sc.shape}")
    rel = np.atleast_2d(rel).astype(np.float64)
    sc = np.atleast_2d(sc).astype(np.float64)
    b, length = rel.shape
    if b == 0 or length == 0:
        raise MetricError(f"ndcg_at_k: empty input of shape {np.shape(relevance)}")
    if k is not None and (int(k) != k or k < 1):
        raise MetricError(f"ndcg_at_k: k must be a positive integer or None, got {k!r}")
    valid = np.ones_like(rel, dtype=bool) if mask is None else np.atleast_2d(np.asarray(mask, dtype=bool))
    if valid.shape != rel.shape:
        raise MetricError(f"mask: expected shape {np.shape(relevance)}, got {np.shape(mask)}")
    if (~np.isfinite(sc) & valid).any():
        r, c = np.argwhere(~np.isfinite(sc) & valid)[0]
        raise MetricError(f"scores: list {r}, position {c}: non-finite score {sc[r, c]!r}")
    if ((rel < 0) | ~np.isfinite(rel))[valid].any():
        r, c = np.argwhere(((rel < 0) | ~np.isfinite(rel)) & valid)[0]
        raise MetricError(f"relevance: list {r}, position {c}: expected a finite value >= 0, "
                          f"got {rel[r, c]!r}")
    # Padding: relevance 0 and score -inf sorts it after every real entry, where it adds nothing.
    rel = np.where(valid, rel, 0.0)
    sc = np.where(valid, sc, -np.inf)

    discount = 1.0 / np.log2(np.arange(length) + 2.0)
    if k is not None:
        discount[int(k):] = 0.0

    # DCG with tie averaging: sort each row by descending score, then sum gains and discounts per tie
    # block (a block never spans two rows), with flat bincounts: no loop over lists.
    order = np.argsort(-sc, axis=1, kind="stable")
    s_sorted = np.take_along_axis(sc, order, axis=1)
    r_sorted = np.take_along_axis(rel, order, axis=1)
    new_block = np.ones((b, length), dtype=bool)
    new_block[:, 1:] = s_sorted[:, 1:] != s_sorted[:, :-1]
    block = (np.cumsum(new_block.ravel()) - 1).reshape(b, length)
    n_blocks = int(block[-1, -1]) + 1
    disc = np.broadcast_to(discount, (b, length))
    gain_sum = np.bincount(block.ravel(), weights=r_sorted.ravel(), minlength=n_blocks)
    disc_sum = np.bincount(block.ravel(), weights=disc.ravel(), minlength=n_blocks)
    count = np.bincount(block.ravel(), minlength=n_blocks)
    block_row = np.repeat(np.arange(b), new_block.sum(axis=1))
    dcg = np.bincount(block_row, weights=gain_sum / count * disc_sum, minlength=b)

    ideal = -np.sort(-rel, axis=1)           # ties in the ideal order do not change its DCG
    idcg = ideal @ discount
    ndcg = np.zeros(b)
    pos = idcg > 0
    ndcg[pos] = dcg[pos] / idcg[pos]
    return float(ndcg.mean())


# --------------------------------------------------------------------------------------------------
# Acc@N (Eq. 6 of the CIKM'24 paper)


class RetrievalRanks(NamedTuple):
    """Where each query's positive stands among S, as two counts (see :func:`retrieval_ranks`).

    Attributes:
        better: (D,) int64, members of S scoring strictly higher than p_i.
        tied: (D,) int64, *other* members of S scoring exactly as p_i.
    """

    better: np.ndarray
    tied: np.ndarray


def retrieval_ranks(query_vectors: object, positive_vectors: object, *, chunk_bytes: int = 32 << 20,
                    progress: bool = False) -> RetrievalRanks:
    """For each query i, how many members of S score strictly higher than its positive p_i, and how
    many others score exactly as it does.

    S = {p_j} is the *set* of the test set's positives (Eq. 6): positives equal as vectors (the same
    item in two pairs) are one member of S, so a duplicate of p_i is p_i itself, neither better nor
    tied. Score is the dot product. Exact: a chunked matmul over all of S (the work a flat FAISS index
    would do too, but with the tie counts kept, which FAISS's top-k drops). p_i's own score comes out
    of the same matmul as the others', so a tie is an exact equality of the computed scores.

    Args:
        query_vectors: (D, d) query embeddings q_i.
        positive_vectors: (D, d) positive embeddings p_i (row i is query i's positive).
        chunk_bytes: memory bound of one (chunk, |S|) score block.
        progress: show a rich progress bar over the chunks.

    Returns:
        ``RetrievalRanks(better (D,), tied (D,))``, int64; p_i's rank (0-based) under a uniformly
        random order of the ties is uniform on ``better .. better + tied``. Computed in float32 unless
        an input is float64.

    Example::

        >>> import numpy as np
        >>> p = np.eye(3, dtype=np.float32)
        >>> q = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]], dtype=np.float32)
        >>> r = retrieval_ranks(q, p)
        >>> r.better.tolist(), r.tied.tolist()
        ([0, 1, 0], [0, 0, 0])
    """
    q = np.asarray(query_vectors)
    p = np.asarray(positive_vectors)
    if q.ndim != 2 or p.ndim != 2:
        raise MetricError(f"acc_at_n: expected 2-D (D, d) query and positive vectors, got shapes "
                          f"{q.shape} and {p.shape}")
    if q.shape != p.shape:
        raise MetricError(f"acc_at_n: queries {q.shape} and positives {p.shape} must have the same "
                          "shape (row i of each is one test pair)")
    if q.shape[0] == 0:
        raise MetricError("acc_at_n: no test pairs")
    dtype = np.result_type(q.dtype, p.dtype, np.float32)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    q = np.ascontiguousarray(q, dtype=dtype)
    p = np.ascontiguousarray(p, dtype=dtype)
    for name, a in (("query_vectors", q), ("positive_vectors", p)):
        bad = ~np.isfinite(a)
        if bad.any():
            raise MetricError(f"{name}: row {int(np.argwhere(bad)[0, 0])}: non-finite value")
    members, inv = np.unique(p, axis=0, return_inverse=True)    # S as a set of distinct vectors
    inv = inv.reshape(-1)
    members_t = np.ascontiguousarray(members.T)
    d_total = q.shape[0]
    chunk = max(1, int(chunk_bytes // (members.shape[0] * dtype.itemsize)))
    better = np.empty(d_total, dtype=np.int64)
    tied = np.empty(d_total, dtype=np.int64)
    starts = range(0, d_total, chunk)
    if progress and len(starts) > 1:
        from rich.progress import track
        starts = track(starts, description="Acc@N", total=len(starts))
    for a in starts:
        z = min(a + chunk, d_total)
        s = q[a:z] @ members_t                                  # (c, |S|)
        own = s[np.arange(z - a), inv[a:z]][:, None]            # the positive's score, same matmul
        better[a:z] = (s > own).sum(axis=1)
        tied[a:z] = (s == own).sum(axis=1) - 1                  # p_i equals itself: not a tie
    return RetrievalRanks(better, tied)


def expected_hits(better: object, tied: object, n: int) -> np.ndarray:
    """P(rank < N) for each query when ties are broken uniformly at random, in closed form.

    With g members strictly better and t others tied, p_i's 0-based rank is g + U with U uniform on
    {0, ..., t}, so P(rank < N) = clip(N - g, 0, t + 1) / (t + 1): 1 when g + t < N, 0 when g >= N,
    and the share of the tied block that fits in the top N between the two.

    Args:
        better: (D,) counts of strictly better members (``RetrievalRanks.better``).
        tied: (D,) counts of other members tied with p_i (``RetrievalRanks.tied``).
        n: N >= 1.

    Returns:
        (D,) float64 probabilities.

    Example::

        >>> expected_hits([1, 0, 3], [2, 0, 0], 2).tolist()    # 1 of 3 tied places is in the top 2
        [0.3333333333333333, 1.0, 0.0]
    """
    g = np.asarray(better, dtype=np.int64)
    t = np.asarray(tied, dtype=np.int64)
    return np.clip(n - g, 0, t + 1) / (t + 1)


def acc_at_n(query_vectors: object, positive_vectors: object,
             n: int | Sequence[int]) -> float | dict[int, float]:
    """Acc@N, Eq. 6 of the CIKM'24 paper: the share of queries whose positive is in their top-N of S,
    ties broken uniformly at random (in expectation, exactly).

    Acc@N = 1/D sum_i P(p_i in Top_N(q_i, S)), S = {p_j} the set of all positives of the test set,
    ranked by dot product (normalise the vectors first for cosine).

    Convention on ties: members of S that score exactly as p_i are ordered with it uniformly at random,
    and each query counts its *expected* hit, ``clip(N - g, 0, t + 1) / (t + 1)`` with g members
    strictly better and t others tied (:func:`expected_hits`); no sampling. A tie neither helps nor
    hurts a model on average, so a scorer with many ties (popularity counts, an untrained tower that
    maps many items to one vector) is not flattered: counting ties in the item's favour would give
    every query of an all-equal scorer a hit. Positives equal as vectors are one member of S (the same
    item in two pairs), so a duplicate of p_i is neither better nor tied.

    Args:
        query_vectors: (D, d) query embeddings.
        positive_vectors: (D, d) positive embeddings, row i the positive of query i.
        n: N, a positive int, or a sequence of them (then a dict {N: Acc@N} is returned).

    Returns:
        Acc@N in [0, 1], or ``{N: Acc@N}`` for a sequence.

    Example::

        >>> import numpy as np
        >>> p = np.eye(3)
        >>> q = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]])
        >>> acc_at_n(q, p, [1, 2])       # query 1 finds its positive second
        {1: 0.6666666666666666, 2: 1.0}
        >>> acc_at_n(np.zeros((4, 2)), np.arange(8.0).reshape(4, 2), [1, 2])   # all tied: N / |S|
        {1: 0.25, 2: 0.5}
    """
    ns = [n] if isinstance(n, (int, np.integer)) else list(n)
    for v in ns:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise MetricError(f"acc_at_n: N must be a positive integer, got {v!r}")
    if not ns:
        raise MetricError("acc_at_n: no N given")
    ranks = retrieval_ranks(query_vectors, positive_vectors)
    accs = {int(v): float(expected_hits(ranks.better, ranks.tied, int(v)).mean()) for v in ns}
    return accs[int(n)] if isinstance(n, (int, np.integer)) else accs

"""Breakdowns of CTR metrics: item-frequency groups (Figure 6b of the CIKM'24 paper), new items, and
relative changes against a baseline.

Figure 6b divides items into 8 groups by their frequency in the *training* data (group 1 the rarest,
group 8 the most frequent), computes AUC (and LogLoss) of the multimodal and the ID-based model in each
group, and plots |AUC_MM - AUC_ID| / AUC_ID per group (Sec. 6.3.3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmrank.eval.metrics import MetricError, UndefinedMetricError, auc, gauc, logloss

__all__ = ["item_frequency", "frequency_groups", "metrics_by_group", "new_item_mask", "relative_change"]


def item_frequency(train_item_ids: object, item_ids: object) -> np.ndarray:
    """How many times each of ``item_ids`` occurs in ``train_item_ids`` (0 if never).

    Args:
        train_item_ids: (M,) item ids of the training impressions.
        item_ids: (N,) item ids to look up.

    Returns:
        (N,) int64 counts.

    Example::

        >>> item_frequency([5, 5, 7], [7, 5, 9]).tolist()
        [1, 2, 0]
    """
    train = np.asarray(train_item_ids).reshape(-1)
    ids = np.asarray(item_ids).reshape(-1)
    uniq, counts = np.unique(train, return_counts=True)
    if uniq.shape[0] == 0:
        return np.zeros(ids.shape[0], dtype=np.int64)
    pos = np.clip(np.searchsorted(uniq, ids), 0, uniq.shape[0] - 1)
    return np.where(uniq[pos] == ids, counts[pos], 0).astype(np.int64)


def frequency_groups(train_item_ids: object, eval_item_ids: object, n_groups: int = 8) -> np.ndarray:
    """Assign each eval impression to a frequency group of its item (Figure 6b), 0 = rarest.

    Items are ranked by their frequency in the TRAINING impressions; the groups are equal-population
    over the EVAL impressions (quantiles of the eval impressions' item frequency). Items with the same
    training frequency always share a group, so groups are only approximately equal when frequencies
    tie: each frequency level goes to the group that holds the midpoint of its block of impressions
    (sorted by frequency); a group can then be empty, or larger than 1/n_groups. Items never seen in
    training (frequency 0) always go to group 0.

    Args:
        train_item_ids: (M,) item ids of the training impressions.
        eval_item_ids: (N,) item ids of the eval impressions.
        n_groups: number of groups (8 in the paper).

    Returns:
        (N,) int64 group index in [0, n_groups): 0-based (the paper's group g is index g - 1).
        Non-decreasing in the item's training frequency.

    Example::

        >>> train = [1] * 5 + [2] * 3 + [3]
        >>> frequency_groups(train, [1, 1, 2, 2, 3, 3, 4, 4], n_groups=4).tolist()
        [3, 3, 2, 2, 1, 1, 0, 0]
    """
    if int(n_groups) != n_groups or n_groups < 1:
        raise MetricError(f"frequency_groups: n_groups must be a positive integer, got {n_groups!r}")
    freq = item_frequency(train_item_ids, eval_item_ids)
    total = freq.shape[0]
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    levels, level_of_row, level_count = np.unique(freq, return_inverse=True, return_counts=True)
    hi = np.cumsum(level_count)
    lo = hi - level_count
    mid = (lo + hi) / (2.0 * total)                      # the midpoint quantile of each level's block
    level_group = np.minimum((mid * n_groups).astype(np.int64), int(n_groups) - 1)
    level_group[levels == 0] = 0                         # unseen in training: group 1 of the paper
    return level_group[level_of_row.reshape(-1)]


def metrics_by_group(labels: object, scores: object, users: object, group_index: object,
                     n_groups: int, *, with_logloss: bool = False) -> list[dict[str, Any]]:
    """AUC and GAUC (and optionally LogLoss) of each group; NaN where undefined, never an error.

    Args:
        labels: (N,) 0/1 labels.
        scores: (N,) scores (probabilities if ``with_logloss``).
        users: (N,) user ids (the GAUC groups).
        group_index: (N,) int group of each row in [0, n_groups), e.g. from ``frequency_groups``.
        n_groups: number of groups; every group gets a row, empty ones too.
        with_logloss: also report ``logloss`` (``scores`` must then be probabilities).

    Returns:
        ``[{"group": g + 1, "n": rows, "n_pos": positives, "auc": ..., "gauc": ...}, ...]`` for
        g = 0..n_groups-1 (``group`` is 1-based, as in the paper), plain Python numbers, JSON-able.
        ``auc``/``gauc``/``logloss`` are NaN when the group is empty or has no two-class user.

    Example::

        >>> rows = metrics_by_group([1, 0, 1, 1], [.9, .1, .8, .7], [1, 1, 2, 2], [0, 0, 1, 1], 3)
        >>> [(r["group"], r["n"], r["auc"]) for r in rows]
        [(1, 2, 1.0), (2, 2, nan), (3, 0, nan)]
    """
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores).reshape(-1)
    u = np.asarray(users).reshape(-1)
    gi = np.asarray(group_index).reshape(-1)
    if not (y.shape == s.shape == u.shape == gi.shape):
        raise MetricError(f"metrics_by_group: labels {y.shape}, scores {s.shape}, users {u.shape} and "
                          f"group_index {gi.shape} must have the same length")
    if gi.shape[0] and (not np.issubdtype(gi.dtype, np.integer) or gi.min() < 0 or gi.max() >= n_groups):
        raise MetricError(f"group_index: expected integers in [0, {n_groups}), got dtype {gi.dtype}, "
                          f"range [{gi.min()}, {gi.max()}]")
    rows = []
    for g in range(int(n_groups)):
        m = gi == g
        yg, sg, ug = y[m], s[m], u[m]
        row: dict[str, Any] = {"group": g + 1, "n": int(m.sum()), "n_pos": int(np.sum(yg == 1))}
        row["auc"] = _or_nan(auc, yg, sg)
        row["gauc"] = _or_nan(gauc, yg, sg, ug)
        if with_logloss:
            row["logloss"] = _or_nan(logloss, yg, sg)
        rows.append(row)
    return rows


def _or_nan(metric: Any, *args: np.ndarray) -> float:
    """``metric(*args)``, NaN when the metric is undefined (one class, no rows); bad values still raise."""
    try:
        return float(metric(*args))
    except UndefinedMetricError:
        return float("nan")


def new_item_mask(item_created_at: object, new_item_ts: int | float) -> np.ndarray:
    """True for items created strictly after ``new_item_ts`` (the market manifest's ``new_item_ts``).

    Args:
        item_created_at: (N,) creation times (int64 seconds, as ``created_at`` of ITEMS).
        new_item_ts: the boundary; an item created at exactly this time is not new.

    Returns:
        (N,) bool.

    Example::

        >>> new_item_mask([10, 20, 30], 20).tolist()
        [False, False, True]
    """
    return np.asarray(item_created_at).reshape(-1) > new_item_ts


def relative_change(value: Any, baseline: Any, *, absolute: bool = False) -> Any:
    """(value - baseline) / |baseline|: the relative change of a metric against a baseline.

    The sign says the direction (for LogLoss, lower is better: an improvement is negative). The paper's
    Figure 6b plots |AUC_MM - AUC_ID| / AUC_ID; ``absolute=True`` gives that. A zero baseline gives NaN.

    Args:
        value: a number or an array.
        baseline: a number or an array broadcastable with ``value``.
        absolute: return |value - baseline| / |baseline|.

    Returns:
        A float for scalars, else an array.

    Example::

        >>> round(relative_change(0.7575, 0.75), 6)
        0.01
        >>> relative_change([0.5, 0.6], [0.5, 0.0]).tolist()
        [0.0, nan]
    """
    v = np.asarray(value, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    diff = v - b
    if absolute:
        diff = np.abs(diff)
    den = np.abs(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den == 0, np.nan, diff / np.where(den == 0, 1.0, den))
    return float(out) if out.ndim == 0 else out

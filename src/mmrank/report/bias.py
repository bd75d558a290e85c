"""Evaluation code: how much a CTR model's scores follow an item's exposure rather than its true appeal
(issue 22, part 3). Training never reads ``R/truth/``; this module reads the items' true appeal from it
(:func:`mmrank.data.truth.item_appeal`) after training, to judge the scores.

The measure, per strategy, on the test split (the market's behaviour is simulated):

* ``partial_spearman``: the partial Spearman correlation between the model's mean predicted score per
  item (over the item's test impressions) and the item's impression count in the training split,
  controlling for the item's true appeal (the Pearson partial correlation of the three rank vectors).
  Near 0: at equal appeal, the score does not rise with exposure; near 1: it follows exposure.
* ``spearman_within_deciles``: the same question asked another way, the Spearman correlation of score
  and impressions within each decile of true appeal, averaged over the deciles (those with >= 3 items).
* ``spearman``: the plain Spearman correlation of score and impressions (appeal not controlled).
* ``partial_spearman_true_ctr``: the partial Spearman of the same two, controlling instead for the
  item's mean *true click probability* over the same test impressions (``p_click`` of
  ``R/truth/slots.parquet``: appeal, the users' match and the shown position together), so that an item
  scored for the contexts it is shown in is not counted as biased. ``oracle_partial_spearman``: what a
  scorer predicting the true click probability gets on the first measure (the market's own
  exposure-CTR relation at equal appeal, the reference for the first column).
* ``low_gauc``: GAUC (by user) on the test impressions of low-impression items, the bottom quartile of
  the test split's items by training impressions (``low_max``: the largest count in it).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> appeal, imp = rng.normal(size=500), rng.poisson(20, size=500).astype(float)
    >>> abs(partial_spearman(appeal + 0.01 * rng.normal(size=500), imp, appeal)) < 0.2   # appeal only
    True
    >>> partial_spearman(imp + 0.01 * rng.normal(size=500), imp, appeal) > 0.9         # exposure only
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BIAS_KEYS = ("partial_spearman", "spearman_within_deciles", "spearman", "partial_spearman_true_ctr",
             "oracle_partial_spearman", "low_gauc")


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of ``x``, ties sharing their mean rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / counts[inv]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (NaN when either side is constant or fewer than 3 values)."""
    if len(x) < 3:
        return float("nan")
    return _pearson(ranks(x), ranks(y))


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Partial Spearman correlation of ``x`` and ``y`` controlling for ``z``:
    ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` on ranks."""
    if len(x) < 4:
        return float("nan")
    rx, ry, rz = ranks(x), ranks(y), ranks(z)
    xy, xz, yz = _pearson(rx, ry), _pearson(rx, rz), _pearson(ry, rz)
    den = np.sqrt(max(1 - xz * xz, 0.0) * max(1 - yz * yz, 0.0))
    return float((xy - xz * yz) / den) if den > 0 else float("nan")


def spearman_within_bins(x: np.ndarray, y: np.ndarray, z: np.ndarray, n_bins: int = 10) -> float:
    """Spearman of ``x`` and ``y`` within each of ``n_bins`` quantile bins of ``z``, averaged over the
    bins with at least 3 values where it is defined."""
    if len(z) == 0:
        return float("nan")
    edges = np.quantile(z, np.linspace(0, 1, n_bins + 1)[1:-1])
    b = np.searchsorted(edges, z, side="right")
    vals = [spearman(x[b == k], y[b == k]) for k in range(n_bins) if (b == k).sum() >= 3]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def exposure_bias(test_items: np.ndarray, scores: np.ndarray, users: np.ndarray, labels: np.ndarray,
                  train_items: np.ndarray, appeal_ids: np.ndarray, appeal: np.ndarray,
                  true_p: np.ndarray | None = None) -> dict[str, Any]:
    """The measure of the module docstring.

    Args:
        test_items, scores, users, labels: ``(N,)`` per test impression: item id, predicted score,
            user id, click.
        train_items: ``(M,)`` item id of every training impression (exposure = count per item).
        appeal_ids, appeal: items' true appeal, ``appeal_ids`` sorted.
        true_p: ``(N,)`` true click probability of each test impression (None: the two measures that
            need it are NaN).

    Returns ``partial_spearman``, ``spearman_within_deciles``, ``spearman``, ``n_items``, ``low_gauc``,
    ``low_n`` (test impressions of low-impression items) and ``low_max``.
    """
    from mmrank.eval import MetricError, gauc

    test_items = np.asarray(test_items, np.int64)
    scores = np.asarray(scores, np.float64)
    items, inv = np.unique(test_items, return_inverse=True)
    mean_score = np.bincount(inv, weights=scores) / np.bincount(inv)
    t_ids, t_counts = np.unique(np.asarray(train_items, np.int64), return_counts=True)
    imp = np.zeros(len(items), np.float64)
    if len(t_ids):
        pos = np.clip(np.searchsorted(t_ids, items), 0, len(t_ids) - 1)
        hit = t_ids[pos] == items
        imp[hit] = t_counts[pos[hit]]
    apos = np.clip(np.searchsorted(appeal_ids, items), 0, len(appeal_ids) - 1)
    known = appeal_ids[apos] == items
    s, e, a = mean_score[known], imp[known], np.asarray(appeal, np.float64)[apos[known]]
    out: dict[str, Any] = {"partial_spearman": partial_spearman(s, e, a),
                           "spearman_within_deciles": spearman_within_bins(s, e, a, 10),
                           "spearman": spearman(s, e), "n_items": int(known.sum()),
                           "partial_spearman_true_ctr": float("nan"), "oracle_partial_spearman": float("nan")}
    if true_p is not None:
        p = np.asarray(true_p, np.float64)
        ok = ~np.isnan(p)
        mean_p = np.bincount(inv[ok], weights=p[ok], minlength=len(items)) / np.maximum(
            np.bincount(inv[ok], minlength=len(items)), 1)
        has = known & (np.bincount(inv[ok], minlength=len(items)) > 0)
        out["partial_spearman_true_ctr"] = partial_spearman(mean_score[has], imp[has], mean_p[has])
        out["oracle_partial_spearman"] = partial_spearman(mean_p[known], e, a)
    low_max = float(np.quantile(imp, 0.25)) if len(imp) else float("nan")
    low_rows = imp[inv] <= low_max
    try:
        low = gauc(np.asarray(labels)[low_rows], scores[low_rows], np.asarray(users)[low_rows])
    except MetricError:
        low = float("nan")
    out.update({"low_gauc": low, "low_n": int(low_rows.sum()), "low_max": low_max})
    return out


def has_appeal(run: str | Path) -> bool:
    """Whether the run has a market truth to measure the bias against."""
    return (Path(run) / "truth" / "items.parquet").exists()


def run_truth(run: str | Path, request_ids: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """What the measure needs from the run's truth (evaluation only): ``appeal_ids``, ``appeal`` and
    ``true_p`` of the impressions ``(request_ids, positions)``."""
    from mmrank.data.truth import item_appeal, slot_click_probability

    ids, appeal = item_appeal(run)
    return {"appeal_ids": ids, "appeal": appeal,
            "true_p": slot_click_probability(run, request_ids, positions)}


class RunBias:
    """The measure on one CTR run's test split: built once per comparison (it reads the run's truth),
    then called with each model's test-split scores. ``samples``: the run's CTR samples (``item_id``,
    ``user_id``, ``label``, ``request_id``, ``position``); ``test_rows`` / ``train_rows`` index them."""

    def __init__(self, run: str | Path, samples: Any, test_rows: np.ndarray, train_rows: np.ndarray) -> None:
        self.items, self.users = samples.item_id[test_rows], samples.user_id[test_rows]
        self.labels, self.train_items = samples.label[test_rows], samples.item_id[train_rows]
        self.truth = run_truth(run, samples.request_id[test_rows], samples.position[test_rows])

    @classmethod
    def of_run(cls, run: str | Path, samples: Any, test_rows: np.ndarray,
               train_rows: np.ndarray) -> RunBias | None:
        """The measure of the run, or None when the run has no market truth (a real log)."""
        return cls(run, samples, test_rows, train_rows) if has_appeal(run) else None

    def __call__(self, scores: np.ndarray) -> dict[str, Any]:
        return exposure_bias(self.items, scores, self.users, self.labels, self.train_items, **self.truth)

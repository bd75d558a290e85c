"""The statistics of the analyses, on plain NumPy arrays: the exchange rate (OLS slope of downstream
gain on an intermediate metric, a bootstrap interval over checkpoints, Spearman's rank correlation),
the power law of a scaling curve (exponent with a residual-bootstrap interval) and its saturation point.

Every bootstrap is seeded: the same inputs give the same intervals.

Example::

    >>> x = np.array([1.0, 2, 4, 8, 16]); y = 0.5 * x ** 0.3
    >>> round(fit_power_law(x, y)["exponent"], 6)
    0.3
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from mmrank.errors import MMRankError


def ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line of ``y`` on ``x`` (needs two distinct x)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if len(x) < 2 or sxx == 0.0:
        raise MMRankError(f"OLS slope: need at least two distinct x values, got {sorted(set(x.tolist()))}")
    slope = float(xc @ (y - y.mean())) / sxx
    return slope, float(y.mean() - slope * x.mean())


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None when either side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def exchange_rate(metric: np.ndarray, gain: np.ndarray, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict[str, Any]:
    """The exchange rate of one intermediate metric over checkpoints.

    Returns ``{"slope", "intercept", "ci": [lo, hi], "spearman", "n"}``: ``slope`` is the OLS slope of
    ``gain`` on ``metric`` (downstream gain per unit of the metric); ``ci`` the percentile interval of
    the slope over ``n_boot`` resamples of the checkpoints with replacement (resamples whose metric is
    constant are drawn again); ``spearman`` the rank correlation.
    """
    m, g = np.asarray(metric, np.float64), np.asarray(gain, np.float64)
    if m.shape != g.shape or m.ndim != 1:
        raise MMRankError(f"exchange rate: metric {m.shape} and gain {g.shape} must be equal 1-d arrays")
    slope, icpt = ols(m, g)
    rng = np.random.default_rng(seed)
    boots: list[float] = []
    tries = 0
    while len(boots) < n_boot and tries < 20 * n_boot:
        tries += 1
        idx = rng.integers(0, len(m), len(m))
        if np.ptp(m[idx]) == 0:
            continue
        boots.append(ols(m[idx], g[idx])[0])
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return {"slope": slope, "intercept": icpt, "ci": [float(lo), float(hi)], "spearman": spearman(m, g),
            "n": int(len(m))}


def best_metric(rates: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The metric with the best exchange rate, and the rule that chose it.

    Rule: among the metrics whose rank correlation is positive and whose slope interval lies above
    zero, the largest slope (most downstream gain per unit of metric, all metrics being accuracies in
    [0, 1]); when none qualifies, the largest rank correlation, and the rule says so.
    """
    if not rates:
        raise MMRankError("exchange rate: no intermediate metric to compare")
    ok = {k: r for k, r in rates.items() if (r["spearman"] or 0) > 0 and r["ci"][0] > 0}
    if ok:
        best = max(ok, key=lambda k: ok[k]["slope"])
        return best, ("largest OLS slope among the metrics with Spearman > 0 and a bootstrap 95% "
                      "interval above 0")
    best = max(rates, key=lambda k: -2.0 if rates[k]["spearman"] is None else rates[k]["spearman"])
    return best, ("no metric's slope interval lies above 0: the largest Spearman rank correlation "
                  "(weak evidence)")


def fit_power_law(x: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict[str, Any]:
    """Fit ``y = a * x ** b`` by least squares on ``log y = log a + b log x``.

    Returns ``{"a", "exponent", "ci": [lo, hi], "r2", "n"}``; ``ci`` is the percentile interval of the
    exponent over ``n_boot`` residual-bootstrap refits (log-space residuals resampled with replacement,
    added back to the fitted line). Needs positive x and y and two distinct x.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise MMRankError(f"power law: need >= 2 points with x and y of one length, got {len(x)}, {len(y)}")
    if (x <= 0).any() or (y <= 0).any():
        raise MMRankError("power law: x and y must be positive (log axes)")
    lx, ly = np.log(x), np.log(y)
    b, la = ols(lx, ly)
    fitted = la + b * lx
    resid = ly - fitted
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    rng = np.random.default_rng(seed)
    # residuals rescaled for the two fitted parameters (leverage-free correction)
    scale = np.sqrt(len(x) / max(len(x) - 2, 1))
    boots = [ols(lx, fitted + scale * resid[rng.integers(0, len(x), len(x))])[0] for _ in range(n_boot)]
    a_ = (1 - level) / 2
    lo, hi = np.quantile(boots, [a_, 1 - a_])
    return {"a": float(np.exp(la)), "exponent": float(b), "ci": [float(lo), float(hi)], "r2": r2,
            "n": int(len(x))}


def try_power_law(x: np.ndarray, y: np.ndarray, **kw: Any) -> dict[str, Any]:
    """:func:`fit_power_law`, or ``{"exponent": None, "reason": ...}`` when the curve cannot be fitted
    on log axes (a value <= 0, fewer than two distinct x)."""
    try:
        return fit_power_law(x, y, **kw)
    except MMRankError as err:
        return {"exponent": None, "ci": None, "reason": str(err)}


def saturation(x: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Where a curve saturates: the first x from which every later step gains less than ``threshold``
    per doubling of x, i.e. ``(y[i+1] - y[i]) / log2(x[i+1] / x[i]) < threshold`` for all i >= that
    point (points sorted by x; points at one x are averaged first). ``x`` None when the last step
    still gains ``threshold`` or more (not saturated within the measured range).

    Returns ``{"x", "threshold", "gain_per_doubling": [...]}`` (one value per step between distinct x).
    """
    xs, inv = np.unique(np.asarray(x, np.float64), return_inverse=True)
    ys = np.bincount(inv, weights=np.asarray(y, np.float64)) / np.bincount(inv)
    per = [(ys[i + 1] - ys[i]) / np.log2(xs[i + 1] / xs[i]) for i in range(len(xs) - 1)]
    at = None
    for i in range(len(per) - 1, -1, -1):
        if per[i] >= threshold:
            break
        at = float(xs[i])
    return {"x": at, "threshold": threshold, "gain_per_doubling": [float(p) for p in per]}

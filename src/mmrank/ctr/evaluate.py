"""CTR evaluation on a run's test split: AUC, GAUC and LogLoss overall, per item-frequency group and on
new items (Figure 6b), and :func:`json_ready` for writing the figures as JSON.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mmrank.ctr.rundata import RunData

N_GROUPS = 8


def json_ready(x: Any) -> Any:
    """``x`` with NaN as None, tuples as lists and NumPy scalars as Python ones (recursively), ready
    for ``json.dumps`` (a metric undefined on a slice is written as null, not as the invalid NaN)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return json_ready(x.item())
    return x


def evaluate(data: RunData, probs: np.ndarray, rows: np.ndarray | None = None) -> dict:
    """AUC, GAUC (by user), LogLoss; the same per item-frequency group (8, by training frequency,
    lowest first, Figure 6b) and on new items (created after the manifest's ``new_item_ts``)."""
    from mmrank.eval import auc, frequency_groups, gauc, logloss, metrics_by_group, new_item_mask

    s = data.samples
    rows = data.enc.test_rows() if rows is None else rows
    y, users, items = s.label[rows].astype(np.int64), s.user_id[rows], s.item_id[rows]
    out: dict[str, Any] = {"n": int(len(rows)), "auc": auc(y, probs), "gauc": gauc(y, probs, users),
                           "logloss": logloss(y, probs)}
    groups = frequency_groups(s.item_id[data.train_rows()], items, N_GROUPS)
    out["groups"] = [{k: r[k] for k in ("group", "n", "auc", "gauc", "logloss")}
                     for r in metrics_by_group(y, probs, users, groups, N_GROUPS, with_logloss=True)]
    new_ts = data.manifest.get("new_item_ts")
    if new_ts is not None and data.item_created_at is not None:
        ids, created = data.item_created_at
        pos = np.clip(np.searchsorted(ids, items), 0, len(ids) - 1)
        is_new = new_item_mask(np.where(ids[pos] == items, created[pos], -1), new_ts)
        rowsum = metrics_by_group(y, probs, users, is_new.astype(np.int64), 2)[1]
        out["new_items"] = {"n": rowsum["n"], "auc": rowsum["auc"], "gauc": rowsum["gauc"]}
    else:
        out["new_items"] = {"n": 0, "auc": float("nan"), "gauc": float("nan")}
    return out

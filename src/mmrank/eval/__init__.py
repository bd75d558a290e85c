"""Evaluation: one tested implementation of each metric, and the breakdowns of the CIKM'24 paper.

Metrics (``mmrank.eval.metrics``): ``auc``, ``gauc`` (+ ``group_auc``), ``logloss``, ``ndcg_at_k``,
``acc_at_n`` (+ ``retrieval_ranks``). Breakdowns (``mmrank.eval.breakdowns``): item-frequency groups
(Figure 6b), per-group metrics, new items, relative change against a baseline.
"""

from mmrank.eval.breakdowns import (
    frequency_groups,
    item_frequency,
    metrics_by_group,
    new_item_mask,
    relative_change,
)
from mmrank.eval.metrics import (
    GroupAUC,
    MetricError,
    UndefinedMetricError,
    acc_at_n,
    auc,
    gauc,
    group_auc,
    logloss,
    ndcg_at_k,
    retrieval_ranks,
)

__all__ = [
    "auc", "gauc", "group_auc", "GroupAUC", "logloss", "ndcg_at_k", "acc_at_n", "retrieval_ranks",
    "MetricError", "UndefinedMetricError",
    "frequency_groups", "item_frequency", "metrics_by_group", "new_item_mask", "relative_change",
]

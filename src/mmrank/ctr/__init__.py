"""Multimodal representations in the CTR model (Sheng et al., CIKM'24, Sec. 4 and 6.3).

* :mod:`mmrank.ctr.data`: CTR samples (Parquet -> NumPy, CSR histories) and padded mini-batches.
* :mod:`mmrank.ctr.layers`: ``TargetAttention`` (DIN), ``SimTier`` (Eq. 2, Alg. 1), ``SimScore``, ``MLP``.
* :mod:`mmrank.ctr.models`: ``MakeModule`` (Eqs. 3-5), ``CtrModel`` (id, vector, simscore, simtier, make,
  simtier+make).
* :mod:`mmrank.ctr.trainer`: ``train`` (the one-epoch rule), ``pretrain_make`` (multi-epoch), ``predict``.
* :mod:`mmrank.ctr.run` / :mod:`mmrank.ctr.compare`: the stage on a run directory, the Table 3 analogue.
"""

from __future__ import annotations

from pathlib import Path

from mmrank.ctr.layers import MLP, SimScore, SimTier, TargetAttention
from mmrank.ctr.models import STRATEGIES, CtrConfig, CtrModel, MakeConfig, MakeModule
from mmrank.ctr.trainer import TrainConfig, predict, pretrain_make, train

__all__ = ["MLP", "SimScore", "SimTier", "TargetAttention", "STRATEGIES", "CtrConfig", "CtrModel",
           "MakeConfig", "MakeModule", "TrainConfig", "predict", "pretrain_make", "train", "item_vectors",
           "demo_stage"]

# The demo's settings per size (1 seed): MAKE epochs, the epochs curve, and the latest training rows
# used (the budget at size "small" is 5 minutes on 2 cores).
DEMO = {"tiny": dict(make_epochs=2, curve=(0, 2), max_train_rows=None),
        "small": dict(make_epochs=2, curve=(0, 2), max_train_rows=120_000),
        "default": dict(make_epochs=4, curve=(0, 1, 2, 4), max_train_rows=400_000)}


def item_vectors(run: Path, item_ids=None):  # noqa: ANN001, ANN201  (re-exported, see run.py)
    """See :func:`mmrank.ctr.run.item_vectors`."""
    from mmrank.ctr.run import item_vectors as _iv

    return _iv(run, item_ids)


def demo_stage(run: Path, size: str) -> dict:
    """The CTR stage of ``mmrank demo``: a one-seed comparison of the six strategies on the run.

    Returns the headline figures: GAUC/AUC of each strategy, relative GAUC change against ``id``
    overall, on the rarest item group and on new items, the MAKE epochs curve, and ``oracle_auc``.
    """
    from mmrank import threads
    from mmrank.ctr.compare import compare

    if size not in DEMO:
        from mmrank.errors import ConfigError

        raise ConfigError(f"size: expected one of {', '.join(DEMO)}, got {size!r}")
    threads.configure(min(2, threads.get()))
    r = compare(Path(run), seeds=1, progress=False, **DEMO[size])
    out = {"oracle_auc": r.get("oracle_auc"), "representations": r.get("representations"),
           "seconds": r.get("seconds"), "plots": r.get("plots", [])}
    for s in STRATEGIES:
        rel = r[s].get("relative", {})
        out[s] = {"auc": r[s]["auc"]["mean"], "gauc": r[s]["gauc"]["mean"],
                  "logloss": r[s]["logloss"]["mean"], "rel_gauc": rel.get("gauc"),
                  "rel_gauc_group1": (rel.get("groups_gauc") or [None])[0],
                  "rel_gauc_group8": (rel.get("groups_gauc") or [None])[-1],
                  "rel_gauc_new_items": rel.get("new_items_gauc")}
    out["make_epochs_curve"] = r.get("make_epochs_curve")
    return out

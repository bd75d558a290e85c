"""Re-ranking search lists with multimodal fusion: ARMMT (JD.com) and SEQ+MD, with baselines.

* :mod:`mmrank.rerank.data`: lists (Parquet -> CSR arrays), vocabularies, padded list batches.
* :mod:`mmrank.rerank.features`: frozen per-modality item and query representations (cached).
* :mod:`mmrank.rerank.models`: ``ListModel`` composed of :mod:`mmrank.models` blocks; ``MODELS`` by name.
* :mod:`mmrank.rerank.trainer`: training on shown candidates, scoring shown or all candidates.
* :mod:`mmrank.rerank.beam`: the generator-evaluator mode (beam search over lists).
* :mod:`mmrank.rerank.compare`: logged-label metrics and the market's evaluator, over seeds.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_stage"]

# The demo's settings per size (1 seed).
DEMO = {"tiny": dict(models=["logged", "dnn", "armmt", "armmt-concat", "seqmd", "mmoe"], max_train_lists=None),
        "small": dict(models=["logged", "dnn", "armmt", "armmt-concat", "mmoe", "seqmd"], max_train_lists=20_000),
        "default": dict(models=None, max_train_lists=60_000)}


def demo_stage(run: Path, size: str) -> dict:
    """The re-ranking stage of ``mmrank demo``: a one-seed comparison on the run's lists.

    Returns per model: purchase (CVR) AUC, NDCG@10 and the evaluator's expected purchases and GMV, and
    the markdown table (``R/rerank/compare.md``).
    """
    import torch

    from mmrank.errors import ConfigError
    from mmrank.rerank.compare import compare
    from mmrank.rerank.trainer import RerankTrainConfig

    if size not in DEMO:
        raise ConfigError(f"size: expected one of {', '.join(DEMO)}, got {size!r}")
    lists = Path(run) / "data" / "lists.parquet"
    import pyarrow.parquet as pq

    if not lists.exists() or "item_ids" not in pq.read_schema(lists).names:
        return {"skipped": f"{lists} has no search-surface candidate lists (a market from before the LISTS schema "
                           "of issue 9); re-generate the market"}
    from mmrank.threads import configure

    configure(min(2, torch.get_num_threads()), faiss=False)
    cfg = DEMO[size]
    r = compare(Path(run), seeds=1, models=cfg["models"], progress=False,
                train_cfg=RerankTrainConfig(max_train_lists=cfg["max_train_lists"]))
    meta = r["meta"]
    out = {"evaluator": meta["evaluator"], "test_requests": meta["test_requests"], "plots": meta.get("plots", []),
           "markdown": Path(meta["markdown"]).read_text()}
    for m in meta["models"]:
        out[m] = {"auc_purchase": r[m]["auc"]["purchase"]["mean"], "ndcg@10": r[m]["ndcg@10"]["mean"],
                  "expected_purchases": r[m]["expected_purchases"]["mean"],
                  "expected_gmv": r[m]["expected_gmv"]["mean"]}
    return out

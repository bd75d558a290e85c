"""The embedding index table, its ANN index, and real-time ingestion (Section 5, Figure 4 of the
CIKM'24 Taobao paper): a new item's vector reaches training and serving within a second of arrival.

Example::

    >>> from mmrank.store import EmbeddingTable
    >>> t = EmbeddingTable.open(run / "embeddings")      # the CURRENT version, read-only  # doctest: +SKIP
    >>> t.version, t.dim, len(t), t.ids()[:3]                                           # doctest: +SKIP
    >>> t.get(item_ids)            # (N, dim) float32; KeyError names the first unknown id # doctest: +SKIP
    >>> t.get(item_ids, missing="zero")                                                 # doctest: +SKIP

Backends: ``local`` (the embedded default; :mod:`mmrank.store.local`) and ``redis``
(:mod:`mmrank.store.redis_table`, chosen by ``R/embeddings/STORE.json``).
"""

from __future__ import annotations

from mmrank.store.ann import AnnConfig, AnnIndex, recall_at_k
from mmrank.store.ingest import ItemStore, NewItemLog, embed_catalog, ingest
from mmrank.store.table import EmbeddingTable, set_store_config

__all__ = ["AnnConfig", "AnnIndex", "EmbeddingTable", "ItemStore", "NewItemLog", "demo_stage",
           "embed_catalog", "ingest", "recall_at_k", "set_store_config"]


def demo_stage(run, size: str = "small") -> dict:
    """The store's stage of ``mmrank demo`` (see :mod:`mmrank.store.demo`)."""
    from mmrank.store.demo import demo_stage as _demo_stage

    return _demo_stage(run, size)

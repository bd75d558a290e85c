"""Model blocks behind one registry: a name -> a block (as :mod:`mmrank.encoders` does for encoders).

CTR strategies (:class:`mmrank.ctr.models.CtrModel`) and re-rankers (:mod:`mmrank.rerank`) are
compositions of these blocks; heads return ``{task: logit}`` and :class:`MultiTaskLoss` takes one named
term per label.

Example::

    >>> from mmrank.models import create, list_blocks
    >>> "cafu" in list_blocks()
    True
    >>> fusion = create("cafu", modalities=["image", "text"], dim=8, context_dim=4)
    >>> type(fusion).__name__
    'CAFU'
"""

from __future__ import annotations

from typing import Any

from mmrank.errors import ConfigError
from mmrank.models import blocks

# name -> (class, one-line description)
_REGISTRY: dict[str, tuple[type, str]] = {
    "id_features": (blocks.IdFeatures, "ID embeddings: item, category, region, user, position"),
    "interest": (blocks.InterestEncoder, "DIN target attention over a (packed) behaviour sequence"),
    "vector": (blocks.VectorFeature, "Vector: a representation through a linear map"),
    "simscore": (blocks.SimScoreFeature, "SimScore: target-history similarity joins each history key"),
    "simtier": (blocks.SimTierFeature, "SimTier: similarity counts in N tiers (Eq. 2, Algorithm 1)"),
    "make_knowledge": (blocks.MakeKnowledge, "MAKE's knowledge (Sec. 4.3), standardised, frozen or trained"),
    "concat": (blocks.ConcatFusion, "fusion by concatenation of modality features"),
    "cafu": (blocks.CAFU, "ARMMT's context-aware fusion unit"),
    "transformer": (blocks.TransformerListEncoder, "transformer encoder over a list (PRM)"),
    "mpsa": (blocks.MultiPerspectiveSelfAttention, "ARMMT's multi-perspective self-attention over a list"),
    "region_mask": (blocks.RegionMask, "SEQ+MD's feature-generated mask over shared and regional parameters"),
    "heads": (blocks.TaskHeads, "independent towers, {task: logit}"),
    "seq_heads": (blocks.SequentialHeads, "SEQ(+MD): click -> cart -> purchase towers, {task: logit}"),
    "mmoe": (blocks.MMoEHeads, "MMoE: shared experts, per-task gates and towers, {task: logit}"),
    "esmm": (blocks.ESMMHeads, "ESMM: chained probabilities over the entire space, {task: logit}"),
    "multitask_loss": (blocks.MultiTaskLoss, "one named BCE term per label"),
}


def list_blocks() -> list[str]:
    """The registered block names."""
    return sorted(_REGISTRY)


def describe_blocks() -> dict[str, str]:
    """Name -> one-line description."""
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def create(name: str, **kw: Any) -> Any:
    """Build block ``name`` with its keyword arguments."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown block {name!r}; known: {', '.join(list_blocks())}")
    return _REGISTRY[name][0](**kw)


__all__ = ["create", "list_blocks", "describe_blocks"]

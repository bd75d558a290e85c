# Frozen copy of src/mmrank/ctr/models.py at bf19a98 (before the blocks refactor): the reference that
# tests/test_models_blocks.py compares the block-composed CtrModel against. Do not edit.
# Only its import lines follow the modules that moved since (mmrank.models.layers, HISTORY_LEN).
"""CTR models assembled from :mod:`mmrank.ctr.layers`: the ID baseline (DIN) and the integration
strategies of Sheng et al. (CIKM'24, Sec. 4 and Table 3) over frozen pre-trained item representations.

* ``id``: item, category, user, region and position embeddings; DIN target attention over the history
  (item + category embeddings); MLP.
* ``vector``: the representation (through a linear map to ``vector_dim``) is concatenated to the ID
  embeddings of the target and of every history item before the attention.
* ``simscore``: ``s_i = v_i . v_c`` joins each history item's embedding as one more feature.
* ``simtier``: SimTier counts (Eq. 2, Algorithm 1), divided by L, join the MLP input.
* ``make``: a :class:`MakeModule` (Eqs. 3-5) pre-trained for E epochs on the CTR task (see
  :func:`mmrank.ctr.trainer.pretrain_make`); ``v_MAKE`` and the intermediate outputs of ``MLP_MAKE``
  join the MLP input of the one-epoch ID model. E = 0 trains it jointly (with its own loss, Eq. 5, as
  an auxiliary term).
* ``simtier+make``: both.

``forward(batch)`` returns ``{"logit": (B,), "aux_logits": {name: (B,)}}``.

Example::

    >>> import torch
    >>> from mmrank.ctr.models import CtrConfig, CtrModel, ModelSizes
    >>> sizes = ModelSizes(n_items=10, n_users=5, n_categories=4, n_regions=3, vec_dim=8)
    >>> vecs = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    >>> m = CtrModel(CtrConfig(strategy="simtier"), sizes, vectors=vecs)
    >>> b = {"item": torch.tensor([2, 3]), "user": torch.tensor([2, 2]), "category": torch.tensor([1, 2]),
    ...      "region": torch.tensor([1, 1]), "position": torch.tensor([1, 2]),
    ...      "hist_item": torch.tensor([[2, 4, 0], [5, 0, 0]]),
    ...      "hist_category": torch.tensor([[1, 2, 0], [3, 0, 0]]),
    ...      "mask": torch.tensor([[True, True, False], [True, False, False]]),
    ...      "item_v": torch.tensor([2, 3]), "hist_item_v": torch.tensor([[2, 4, 0], [5, 0, 0]])}
    >>> m(b)["logit"].shape
    torch.Size([2])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mmrank.config import StrictModel
from mmrank.ctr.data import MAX_POSITION
from mmrank.data.schemas import HISTORY_LEN as MAX_LEN
from mmrank.models.layers import MLP, ItemVectors, SimScore, SimTier, TargetAttention, pack, packed_similarity

STRATEGIES = ("id", "vector", "simscore", "simtier", "make", "simtier+make")
Strategy = Literal["id", "vector", "simscore", "simtier", "make", "simtier+make"]


class MakeConfig(StrictModel):
    """MAKE (Sec. 4.3): a DIN over representations and a four-layer MLP_MAKE."""

    proj_dim: int = Field(32, ge=1, description="representations are mapped to this width first")
    att_hidden: list[int] = Field(default_factory=lambda: [80, 40])
    mlp_hidden: list[int] = Field(default_factory=lambda: [128, 64, 32],
                                  description="hidden widths; with the output layer, 4 layers (Eq. 4)")
    act: str = "prelu"
    # Measured on the small market (1 seed): 'full' lowered GAUC against the ID model (-1.3% at E=4)
    # and fell as E grew; 'compact' raised it (+0.17% at E=2). Default: compact.
    knowledge: Literal["full", "compact"] = Field(
        "compact", description="what joins the ID model: 'full' = v_MAKE + every hidden output of MLP_MAKE + "
                            "its logit (Sec. 4.3); 'compact' = the last hidden output + the logit")
    # Measured on the small market (E=4, seeds 0 and 1): freeze GAUC 0.7630 / 0.7609, finetune
    # 0.7621 / 0.7592. Default: freeze.
    after_pretrain: Literal["freeze", "finetune"] = Field(
        "freeze", description="after E > 0 pre-training epochs: keep MAKE fixed while the ID model trains, "
                              "or keep training it with the ID model (with its Eq. 5 loss as an auxiliary term)")


class CtrConfig(StrictModel):
    """Architecture of a CTR model (training settings are in :class:`mmrank.ctr.trainer.TrainConfig`)."""

    strategy: Strategy = "id"
    emb_dim: int = Field(16, ge=1)
    att_hidden: list[int] = Field(default_factory=lambda: [80, 40])
    mlp_hidden: list[int] = Field(default_factory=lambda: [200, 80])
    act: str = "prelu"
    use_user: bool = True
    sparse_embeddings: bool = Field(True, description="item and user tables get sparse gradients "
                                                      "(updated by LazyAdam, rows in the batch only)")
    use_position: bool = Field(True, description="position embedding (train and eval on logged "
                                                 "positions; at serving, pass the slot to score)")
    max_len: int = Field(MAX_LEN, ge=1)
    n_tiers: int = Field(20, ge=1, description="SimTier's N")
    # Measured (benchmarks/ctr_throughput.py, 1M rows, batch 1024, 128-d, 2 threads): in the model
    # SimTier adds 12.9% to the ID model's step (44.2 -> 49.9 ms: a gather of every history item's
    # vector); read from the pipeline it adds 1.6%, after a one-off 11.7 s per 1M rows that every
    # epoch, seed and strategy over the same rows then reuses. Default: pipeline. A batch without
    # precomputed counts (e.g. new data at predict time) gets them computed in the model: the same
    # counts either way (tested).
    simtier_in: Literal["model", "pipeline"] = Field(
        "pipeline", description="compute SimTier in the forward pass, or read batch['simtier'] precomputed "
                                "by mmrank.ctr.data.simtier_features (falls back to the model when absent)")
    vector_dim: int = Field(16, ge=1, description="Vector: width the representation is mapped to")
    make: MakeConfig = Field(default_factory=MakeConfig)

    @property
    def uses_vectors(self) -> bool:
        return self.strategy != "id"

    @property
    def uses_simtier(self) -> bool:
        return self.strategy in ("simtier", "simtier+make")

    @property
    def uses_make(self) -> bool:
        return self.strategy in ("make", "simtier+make")


@dataclass
class ModelSizes:
    """Vocabulary sizes (from :class:`mmrank.ctr.data.FeatureSpace`) and the representation width."""

    n_items: int
    n_users: int
    n_categories: int
    n_regions: int
    n_positions: int = MAX_POSITION
    vec_dim: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def lookup_vectors(vectors: ItemVectors, batch: dict[str, torch.Tensor],
                   idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target ``(B, D)`` and packed history ``(nnz, D)`` representations of a batch, at the valid
    positions ``idx`` (from :func:`mmrank.ctr.layers.pack`)."""
    if "item_v" not in batch or "hist_item_v" not in batch:
        raise KeyError("this strategy needs representations: the batch has no 'item_v'/'hist_item_v' "
                       "(encode the samples with a FeatureSpace that has vec_items)")
    return vectors(batch["item_v"]), vectors(batch["hist_item_v"].reshape(-1).index_select(0, idx))


class MakeModule(nn.Module):
    """MAKE, the Multimodal Knowledge Extractor (Sec. 4.3).

    Eq. 3: ``v_MAKE = DIN({v_i}, v_c)``, here ``[pooled interest, target]`` after a linear map of the
    representations to ``proj_dim``; Eq. 4: ``v_hat = MLP_MAKE(v_MAKE)`` (four layers); Eq. 5: the
    cross-entropy of ``v_hat`` with the click, minimised over E epochs by
    :func:`mmrank.ctr.trainer.pretrain_make`. Only multimodal parameters: no ID embedding.

    Args:
        vectors: the frozen representation table.
        cfg: :class:`MakeConfig`.

    ``forward(target (B, D), hist (B, L, D), mask (B, L)) -> {"logit": (B,), "v_make": (B, 2P),
    "knowledge": (B, knowledge_dim)}``, the knowledge being ``v_MAKE``, every hidden output of MLP_MAKE
    and its logit; ``forward_batch(batch)`` looks the vectors up first.
    """

    def __init__(self, vectors: ItemVectors, cfg: MakeConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MakeConfig()
        if len(cfg.mlp_hidden) != 3:
            raise ValueError(f"MLP_MAKE has four layers (Eq. 4): give 3 hidden widths, got {cfg.mlp_hidden}")
        self.cfg = cfg
        self.vectors = vectors
        p = cfg.proj_dim
        self.proj = nn.Linear(vectors.dim, p)
        self.attention = TargetAttention(p, cfg.att_hidden, cfg.act, pool="mean")
        self.mlp = MLP(2 * p, cfg.mlp_hidden, out_dim=1, act=cfg.act)
        self.knowledge_dim = (2 * p + sum(cfg.mlp_hidden) + 1 if cfg.knowledge == "full"
                              else cfg.mlp_hidden[-1] + 1)

    def forward_packed(self, target: torch.Tensor, hist: torch.Tensor,
                       rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``target (B, D)``, packed history ``hist (nnz, D)`` of samples ``rows (nnz,)``."""
        q = self.proj(target)
        pooled, _ = self.attention.forward_packed(q, self.proj(hist), rows)
        v_make = torch.cat([pooled, q], dim=-1)                      # Eq. 3, (B, 2P)
        logit, hidden = self.mlp.forward_hidden(v_make)              # Eq. 4
        parts = [v_make, *hidden, logit] if self.cfg.knowledge == "full" else [hidden[-1], logit]
        return {"logit": logit.squeeze(-1), "v_make": v_make, "knowledge": torch.cat(parts, dim=-1)}

    def forward(self, target: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        idx, rows = pack(mask)
        return self.forward_packed(target, hist.reshape(-1, hist.shape[-1]).index_select(0, idx), rows)

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        idx, rows = pack(batch["mask"])
        v_c, v_h = lookup_vectors(self.vectors, batch, idx)
        return self.forward_packed(v_c, v_h, rows)


class CtrModel(nn.Module):
    """The ID baseline (DIN) and the multimodal strategies, chosen by ``cfg.strategy``.

    Args:
        cfg: :class:`CtrConfig`.
        sizes: :class:`ModelSizes`.
        vectors: ``(V, D)`` frozen representations (rows indexed by ``item_v``/``hist_item_v``), needed by
            every strategy but ``id``.
        make: a (pre-trained) :class:`MakeModule` for ``make``/``simtier+make``; a fresh one is built
            when ``None`` (E = 0, joint training).
        freeze_make: keep MAKE's parameters fixed (after pre-training, E > 0).

    ``forward(batch)`` with the tensors of :func:`mmrank.ctr.data.make_batch` -> ``{"logit": (B,),
    "aux_logits": {...}}``.
    """

    ID_MODULES = ("item_emb", "cat_emb", "user_emb", "region_emb", "pos_emb")

    def __init__(self, cfg: CtrConfig, sizes: ModelSizes, vectors: torch.Tensor | ItemVectors | None = None,
                 make: MakeModule | None = None, freeze_make: bool = False) -> None:
        super().__init__()
        self.cfg, self.sizes = cfg, sizes
        e = cfg.emb_dim
        sparse = cfg.sparse_embeddings
        self.item_emb = nn.Embedding(sizes.n_items, e, padding_idx=0, sparse=sparse)
        self.cat_emb = nn.Embedding(sizes.n_categories, e, padding_idx=0)
        self.region_emb = nn.Embedding(sizes.n_regions, e)
        self.user_emb = nn.Embedding(sizes.n_users, e, sparse=sparse) if cfg.use_user else None
        self.pos_emb = nn.Embedding(sizes.n_positions, e) if cfg.use_position else None
        for emb in (self.item_emb, self.cat_emb, self.region_emb, self.user_emb, self.pos_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.01)
        self.vectors: ItemVectors | None = None
        if cfg.uses_vectors:
            if vectors is None:
                raise ValueError(f"strategy {cfg.strategy!r} needs item representations (vectors=)")
            self.vectors = vectors if isinstance(vectors, ItemVectors) else ItemVectors(vectors)
        q_dim = 2 * e
        self.vec_proj = None
        if cfg.strategy == "vector":
            self.vec_proj = nn.Linear(self.vectors.dim, cfg.vector_dim)
            q_dim += cfg.vector_dim
        self.simscore = SimScore() if cfg.strategy == "simscore" else None
        if self.simscore is not None:
            q_dim += 1
        self.attention = TargetAttention(q_dim, cfg.att_hidden, cfg.act)
        mlp_in = 2 * q_dim + e + (e if cfg.use_user else 0) + (e if cfg.use_position else 0)
        self.simtier = SimTier(cfg.n_tiers) if cfg.uses_simtier else None
        if self.simtier is not None:
            mlp_in += cfg.n_tiers
        self.make: MakeModule | None = None
        self.freeze_make = False
        if cfg.uses_make:
            self.make = make if make is not None else MakeModule(self.vectors, cfg.make)
            self.make.vectors = self.vectors
            mlp_in += self.make.knowledge_dim
            # per-feature standardisation of MAKE's knowledge (its scale is set by pre-training)
            self.knowledge_norm = nn.BatchNorm1d(self.make.knowledge_dim)
            self.set_make_frozen(freeze_make)
        self.mlp = MLP(mlp_in, cfg.mlp_hidden, out_dim=1, act=cfg.act)

    def set_make_frozen(self, frozen: bool) -> None:
        """Fix MAKE's parameters (pre-trained, E > 0) or train them with the model (E = 0)."""
        if self.make is None:
            return
        self.freeze_make = frozen
        for p in self.make.parameters():
            p.requires_grad_(not frozen)

    def id_parameters(self) -> list[nn.Parameter]:
        """Parameters of ID embeddings: trained for one epoch only (the one-epoch rule)."""
        return [p for name in self.ID_MODULES if getattr(self, name) is not None
                for p in getattr(self, name).parameters()]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """History features are computed at the valid positions only (packed, see :func:`pack`)."""
        cfg = self.cfg
        idx, rows = pack(batch["mask"])                                # (nnz,), (nnz,)
        b = batch["item"].shape[0]

        def packed(name: str) -> torch.Tensor:
            return batch[name].reshape(-1).index_select(0, idx)

        q = torch.cat([self.item_emb(batch["item"]), self.cat_emb(batch["category"])], dim=-1)  # (B, 2E)
        k = torch.cat([self.item_emb(packed("hist_item")), self.cat_emb(packed("hist_category"))], dim=-1)
        counts = None                                                  # SimTier from the pipeline
        if self.simtier is not None and cfg.simtier_in == "pipeline" and "simtier" in batch:
            counts = batch["simtier"].to(q.dtype)
        v_c = v_h = None                                               # (B, D), (nnz, D)
        if self.vectors is not None and not (cfg.strategy == "simtier" and counts is not None):
            v_c, v_h = lookup_vectors(self.vectors, batch, idx)
        if self.vec_proj is not None:                                  # Vector
            q = torch.cat([q, self.vec_proj(v_c)], dim=-1)
            k = torch.cat([k, self.vec_proj(v_h)], dim=-1)
        sim = None
        if self.simscore is not None or (self.simtier is not None and counts is None):
            sim = packed_similarity(v_c, v_h, rows)                    # Eq. 2, (nnz,)
        if self.simscore is not None:                                  # SimScore
            q = torch.cat([q, q.new_ones(b, 1)], dim=-1)
            k = torch.cat([k, sim.unsqueeze(-1)], dim=-1)
        pooled, _ = self.attention.forward_packed(q, k, rows)          # DIN, (B, Dq)
        parts = [q, pooled, self.region_emb(batch["region"])]
        if self.user_emb is not None:
            parts.append(self.user_emb(batch["user"]))
        if self.pos_emb is not None:
            parts.append(self.pos_emb(batch["position"]))
        if self.simtier is not None:                                   # SimTier (Algorithm 1)
            if counts is None:
                counts = self.simtier.counts_from_scores(sim, rows, b)
            parts.append(counts / cfg.max_len)
        aux: dict[str, torch.Tensor] = {}
        if self.make is not None:                                      # MAKE knowledge utilisation
            if self.freeze_make:
                with torch.no_grad():
                    self.make.eval()
                    out = self.make.forward_packed(v_c, v_h, rows)
            else:
                out = self.make.forward_packed(v_c, v_h, rows)
                aux["make"] = out["logit"]                             # Eq. 5 as an auxiliary loss
            parts.append(self.knowledge_norm(out["knowledge"]))
        logit = self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
        return {"logit": logit, "aux_logits": aux}

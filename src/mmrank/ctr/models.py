"""CTR models assembled from :mod:`mmrank.models.layers`: the ID baseline (DIN) and the integration
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
* ``sid``: semantic IDs (issue 25): each item's residual k-means codes ``(c_1..c_L)``
  (:mod:`mmrank.sid`) learned as ID features, one embedding table per level, summed
  (:class:`SemanticIdFeature`), joined to the target and to every history key before the attention,
  so the behaviour sequence is pooled as the item IDs are. The codes come from item content only.
* ``sid+simtier+make``: ``sid`` with SimTier and MAKE.
* ``post`` and ``post+simtier+make`` (MOON's post-training, issue 21): ``simtier`` and ``simtier+make``
  on the post-trained table ``R/posttrain`` (:mod:`mmrank.posttrain`) instead of the pre-trained one.
* ``debias``: ``simtier+make`` with the :class:`~mmrank.ctr.debias.VisualDebias` block: the target's
  representation, adjusted against its exposure, joins the MLP input (issue 22).
* ``click-visual``: ``simtier+make`` on the item table of the click-supervised visual encoder
  ``R/pretrain/click-visual`` (the pre-training row of that name, issue 22;
  :func:`mmrank.pretrain.stage.variant_vectors`) instead of the run's table.

Each model is a composition of named blocks (:mod:`mmrank.models.blocks`, created by name by
:func:`mmrank.models.create`). ``forward(batch)`` returns ``{"logits": {"click": (B,)}, "logit": (B,),
"aux_logits": {name: (B,)}}``; ``loss(out, batch)`` one named term per label.

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
from mmrank.ctr.debias import DebiasConfig, VisualDebias
from mmrank.data.schemas import HISTORY_LEN
from mmrank.device import full_precision
from mmrank.models.blocks import (IdFeatures, InterestEncoder, MakeKnowledge, MultiTaskLoss, SimScoreFeature,
                                  SimTierFeature, TaskHeads, VectorFeature)
from mmrank.models.layers import (MLP, ItemVectors, SharedRows, TargetAttention, dense, history_groups, pack,
                                  row_map, similarity)

# The paper's six (Table 3), the defaults of `ctr compare`, the demo and `ctr follow`; then the
# semantic-ID strategies (issue 25), the post-trained ones (issue 21) and the visual debiasing (issue 22),
# run when named.
PAPER_STRATEGIES = ("id", "vector", "simscore", "simtier", "make", "simtier+make")
POST_STRATEGIES = ("post", "post+simtier+make")      # on the post-trained table (mmrank.posttrain)
# on the table of the click-supervised visual encoder R/pretrain/click-visual (issue 22)
CLICK_VISUAL_STRATEGIES = ("click-visual",)
STRATEGIES = (PAPER_STRATEGIES + ("sid", "sid+simtier+make") + POST_STRATEGIES + ("debias",)
              + CLICK_VISUAL_STRATEGIES)
Strategy = Literal["id", "vector", "simscore", "simtier", "make", "simtier+make", "sid", "sid+simtier+make",
                   "post", "post+simtier+make", "debias", "click-visual"]


class MakeConfig(StrictModel):
    """MAKE (Sec. 4.3): a DIN over representations and a four-layer MLP_MAKE."""

    proj_dim: int = Field(32, ge=1, description="representations are mapped to this width first")
    att_hidden: list[int] = Field(default_factory=lambda: [80, 40])
    mlp_hidden: list[int] = Field(default_factory=lambda: [128, 64, 32],
                                  description="hidden widths; with the output layer, 4 layers (Eq. 4)")
    act: str = "prelu"
    # Default compact: on the small market 'full' lowered GAUC against the ID model and fell as E grew,
    # 'compact' raised it (`mmrank ctr compare --knowledge full|compact` measures it).
    knowledge: Literal["full", "compact"] = Field(
        "compact", description="what joins the ID model: 'full' = v_MAKE + every hidden output of MLP_MAKE + "
                            "its logit (Sec. 4.3); 'compact' = the last hidden output + the logit")
    # Default freeze: it gave the higher GAUC than finetune on the small market (`mmrank ctr compare`
    # with ctr.model.make.after_pretrain set either way in --config measures it).
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
    history_len: int = Field(HISTORY_LEN, ge=1)
    n_tiers: int = Field(20, ge=1, description="SimTier's N")
    # Default pipeline: in the model SimTier gathers every history item's vector at every step; read
    # from the pipeline it costs a one-off pass over the rows that every epoch, seed and strategy then
    # reuses (benchmarks/ctr_throughput.py measures both). A batch without
    # precomputed counts (e.g. new data at predict time) gets them computed in the model: the same
    # counts either way (tested).
    simtier_in: Literal["model", "pipeline"] = Field(
        "pipeline", description="compute SimTier in the forward pass, or read batch['simtier'] precomputed "
                                "by mmrank.ctr.data.simtier_features (falls back to the model when absent)")
    vector_dim: int = Field(16, ge=1, description="Vector: width the representation is mapped to")
    make: MakeConfig = Field(default_factory=MakeConfig)
    debias: DebiasConfig = Field(default_factory=DebiasConfig, description="strategy debias: the "
                                 "VisualDebias block (mmrank.ctr.debias)")
    # Speed with and without: benchmarks/ctr_throughput.py --full-history.
    compile_attention: bool = Field(False, description="run DIN's attention unit through torch.compile "
                                    "(inductor's kernels for the device: C++ on a CPU, Triton on CUDA; needs a C++ compiler; "
                                    "compiles on first use; same values)")
    attention_bf16: bool = Field(False, description="DIN's attention unit computes in bfloat16 "
                                 "(torch.autocast on its inputs' device; about 3 significant digits per "
                                 "attention score; on CUDA the trainer's bf16 autocast does so already)")

    @property
    def uses_vectors(self) -> bool:
        return self.strategy != "id"

    @property
    def uses_simtier(self) -> bool:
        return self.strategy in ("simtier", "simtier+make", "sid+simtier+make", "post", "post+simtier+make",
                                 "debias", "click-visual")

    @property
    def uses_make(self) -> bool:
        return self.strategy in ("make", "simtier+make", "sid+simtier+make", "post+simtier+make", "debias",
                                 "click-visual")

    @property
    def uses_sid(self) -> bool:
        return self.strategy.startswith("sid")

    @property
    def uses_posttrained(self) -> bool:
        """Its representations are the post-trained table ``R/posttrain``, not the pre-trained one."""
        return self.strategy in POST_STRATEGIES

    @property
    def uses_click_visual(self) -> bool:
        """Its representations are the click-visual encoder's table, not the run's."""
        return self.strategy in CLICK_VISUAL_STRATEGIES

    @property
    def uses_debias(self) -> bool:
        return self.strategy == "debias"


@dataclass
class ModelSizes:
    """Vocabulary sizes (from :class:`mmrank.ctr.data.FeatureSpace`) and the representation width."""

    n_items: int
    n_users: int
    n_categories: int
    n_regions: int
    n_positions: int = MAX_POSITION
    vec_dim: int = 0
    sid_levels: int = 0   # semantic IDs: L levels of C codes (0 when the strategy has none)
    sid_codes: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def lookup_vectors(vectors: ItemVectors, batch: dict[str, torch.Tensor], idx: torch.Tensor,
                   share: bool = False) -> tuple[torch.Tensor, torch.Tensor | SharedRows]:
    """Target ``(B, D)`` and packed history ``(nnz, D)`` representations of a batch, at the valid
    positions ``idx`` (from :func:`mmrank.models.layers.pack`); with ``share``, the history as
    :class:`SharedRows` when its items repeat (a serving batch: one history, many candidates)."""
    if "item_v" not in batch or "hist_item_v" not in batch:
        raise KeyError("this strategy needs representations: the batch has no 'item_v'/'hist_item_v' "
                       "(encode the samples with a FeatureSpace that has vec_items)")
    hist = batch["hist_item_v"].reshape(-1).index_select(0, idx)
    return vectors(batch["item_v"]), (SharedRows.of(hist, vectors) if share else vectors(hist))




class ItemCodes(nn.Module):
    """A frozen table of semantic IDs, ``(V, L)`` int64, rows indexed as the representations are
    (``item_v``): ``code + 1`` per level, 0 for no code (padding, unknown, an item without a vector).

    Not saved with a model's weights: the codes belong to the run's embedding table (``mmrank sid
    build``) and are re-attached at load time, as :class:`ItemVectors` are.

    ``forward(index (...)) -> (..., L)`` int64.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        if table.dim() != 2:
            raise ValueError(f"item codes must be (V, L), got {tuple(table.shape)}")
        self.register_buffer("table", table.detach().to(torch.int64).contiguous(), persistent=False)

    @property
    def levels(self) -> int:
        return int(self.table.shape[1])

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table.index_select(0, index.reshape(-1)).view(*index.shape, self.table.shape[1])


class SemanticIdFeature(nn.Module):
    """Semantic IDs as learned ID features (TIGER; QARM / OneRec): one embedding table per level of
    ``codes + 1`` rows (row 0: no code), summed over the levels.

    Args:
        levels: L; codes: C codewords per level; dim: embedding width E.

    ``forward(codes (..., L)) -> (..., E)``, ``codes`` as :class:`ItemCodes` holds them (``code + 1``).
    """

    def __init__(self, levels: int, codes: int, dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(codes + 1, dim, padding_idx=0) for _ in range(levels))
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.01)
            with torch.no_grad():
                t.weight[0].zero_()
        self.out_dim = dim

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        out = self.tables[0](codes[..., 0])
        for lvl in range(1, len(self.tables)):
            out = out + self.tables[lvl](codes[..., lvl])
        return out


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

    def forward_packed(self, target: torch.Tensor, hist: torch.Tensor, rows: torch.Tensor,
                       groups: list | None = None) -> dict[str, torch.Tensor]:
        """``target (B, D)``, packed history ``hist (nnz, D)`` (or :class:`SharedRows`) of samples
        ``rows (nnz,)``; ``groups`` as :func:`mmrank.models.layers.history_groups` gives them."""
        q = self.proj(target)
        pooled, _ = self.attention.forward_packed(q, dense(row_map(hist, self.proj)), rows, groups)
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
    """The ID baseline (DIN) and the multimodal strategies, chosen by ``cfg.strategy``, composed of named
    blocks (:mod:`mmrank.models.blocks`):

    ========================  ====================================================================
    block                     strategies
    ========================  ====================================================================
    ``ids`` IdFeatures        all: item + category (target, history), region, user, position
    ``vector`` VectorFeature  vector: joins the target and every history key
    ``simscore``              simscore: the target-history similarity joins every history key
    ``interest``              all: DIN target attention over the history
    ``simtier``               simtier, simtier+make, sid+simtier+make, post, post+simtier+make, debias,
                              click-visual: tier counts / L join the head's input
    ``knowledge``             make, simtier+make, sid+simtier+make, post+simtier+make, debias,
                              click-visual: MakeKnowledge (a MakeModule's knowledge)
    ``sid`` SemanticIdFeature sid, sid+simtier+make: summed per-level code embeddings join the
                              target and every history key (codes from ``codes``, an ItemCodes)
    ``debias`` VisualDebias   debias: the target's representation adjusted against its exposure
    ``head`` TaskHeads        all: one tower, ``{"click": logit}``
    ========================  ====================================================================

    Args:
        cfg: :class:`CtrConfig`.
        sizes: :class:`ModelSizes`.
        vectors: ``(V, D)`` frozen representations (rows indexed by ``item_v``/``hist_item_v``), needed by
            every strategy but ``id``.
        make: a (pre-trained) :class:`MakeModule` for ``make``/``simtier+make``; a fresh one is built
            when ``None`` (E = 0, joint training).
        freeze_make: keep MAKE's parameters fixed (after pre-training, E > 0).

    ``forward(batch)`` with the tensors of :func:`mmrank.ctr.data.make_batch` -> ``{"logits": {"click":
    (B,)}, "logit": (B,) (the click logit), "aux_logits": {"make": (B,)} when MAKE trains jointly}``;
    :meth:`loss` gives one named term per label.
    """

    TASK = "click"
    # Compute what depends on a history item alone once per distinct item of the batch (True in
    # serving, where a request's candidates share one history: mmrank.serve.bundle sets it).
    share_history = False

    def __init__(self, cfg: CtrConfig, sizes: ModelSizes, vectors: torch.Tensor | ItemVectors | None = None,
                 make: MakeModule | None = None, freeze_make: bool = False,
                 codes: torch.Tensor | ItemCodes | None = None) -> None:
        super().__init__()
        self.cfg, self.sizes = cfg, sizes
        e = cfg.emb_dim
        self.ids = IdFeatures(sizes.n_items, sizes.n_categories, sizes.n_regions, sizes.n_users, e,
                              n_positions=sizes.n_positions, use_user=cfg.use_user,
                              use_position=cfg.use_position, sparse=cfg.sparse_embeddings)
        self.vectors: ItemVectors | None = None
        if cfg.uses_vectors:
            if vectors is None:
                raise ValueError(f"strategy {cfg.strategy!r} needs item representations (vectors=)")
            self.vectors = vectors if isinstance(vectors, ItemVectors) else ItemVectors(vectors)
        q_dim = 2 * e
        self.codes: ItemCodes | None = None
        self.sid: SemanticIdFeature | None = None
        if cfg.uses_sid:
            if codes is None or sizes.sid_levels < 1 or sizes.sid_codes < 2:
                raise ValueError(f"strategy {cfg.strategy!r} needs semantic IDs (codes=, sizes.sid_levels, "
                                 f"sizes.sid_codes)")
            self.codes = codes if isinstance(codes, ItemCodes) else ItemCodes(codes)
            if self.codes.levels != sizes.sid_levels:
                raise ValueError(f"item codes have {self.codes.levels} levels, sizes say {sizes.sid_levels}")
            self.sid = SemanticIdFeature(sizes.sid_levels, sizes.sid_codes, e)
            q_dim += self.sid.out_dim
        self.vector = VectorFeature(self.vectors.dim, cfg.vector_dim) if cfg.strategy == "vector" else None
        if self.vector is not None:
            q_dim += self.vector.out_dim
        self.simscore = SimScoreFeature() if cfg.strategy == "simscore" else None
        if self.simscore is not None:
            q_dim += self.simscore.out_dim
        self.interest = InterestEncoder(q_dim, cfg.att_hidden, cfg.act)
        head_in = 2 * q_dim + self.ids.context_dim
        self.simtier = SimTierFeature(cfg.n_tiers, cfg.history_len) if cfg.uses_simtier else None
        if self.simtier is not None:
            head_in += self.simtier.out_dim
        self.knowledge: MakeKnowledge | None = None
        if cfg.uses_make:
            module = make if make is not None else MakeModule(self.vectors, cfg.make)
            module.vectors = self.vectors
            self.knowledge = MakeKnowledge(module, frozen=freeze_make)
            head_in += self.knowledge.out_dim
        self.debias = VisualDebias(self.vectors.dim, cfg.debias) if cfg.uses_debias else None
        if self.debias is not None:
            head_in += self.debias.out_dim
        self.head = TaskHeads(head_in, [self.TASK], cfg.mlp_hidden, act=cfg.act)
        for m in self.modules():
            if isinstance(m, TargetAttention):
                m.compiled, m.bf16 = cfg.compile_attention, cfg.attention_bf16

    @property
    def make(self) -> MakeModule | None:
        return None if self.knowledge is None else self.knowledge.module

    @property
    def freeze_make(self) -> bool:
        return self.knowledge is not None and self.knowledge.frozen

    def set_make_frozen(self, frozen: bool) -> None:
        """Fix MAKE's parameters (pre-trained, E > 0) or train them with the model (E = 0)."""
        if self.knowledge is not None:
            self.knowledge.set_frozen(frozen)

    def id_parameters(self) -> list[nn.Parameter]:
        """Parameters of ID embeddings: trained for one epoch only (the one-epoch rule)."""
        return self.ids.id_parameters() + ([] if self.sid is None else list(self.sid.parameters()))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """History features are computed at the valid positions only (packed, see :func:`pack`)."""
        cfg = self.cfg
        idx, rows = pack(batch["mask"])                                # (nnz,), (nnz,)
        b = batch["item"].shape[0]

        def packed(name: str) -> torch.Tensor:
            return batch[name].reshape(-1).index_select(0, idx)

        q = self.ids.target(batch["item"], batch["category"])                     # (B, 2E)
        k = self.ids.target(packed("hist_item"), packed("hist_category"))         # (nnz, 2E)
        counts = None                                                  # SimTier from the pipeline
        if self.simtier is not None and cfg.simtier_in == "pipeline" and "simtier" in batch:
            counts = batch["simtier"].to(q.dtype)
        if self.sid is not None:                                       # semantic IDs, (B, E), (nnz, E)
            if "item_v" not in batch or "hist_item_v" not in batch:
                raise KeyError("strategy sid needs the representation index: the batch has no "
                               "'item_v'/'hist_item_v' (encode with a FeatureSpace that has vec_items)")
            q = torch.cat([q, self.sid(self.codes(batch["item_v"]))], dim=-1)
            k = torch.cat([k, self.sid(self.codes(packed("hist_item_v")))], dim=-1)
        v_c = v_h = None                                               # (B, D), (nnz, D)
        needs_v = (self.vector is not None or self.simscore is not None or self.knowledge is not None
                   or self.debias is not None or (self.simtier is not None and counts is None))
        if self.vectors is not None and needs_v:
            v_c, v_h = lookup_vectors(self.vectors, batch, idx, self.share_history)
        if self.vector is not None:                                    # Vector
            q = torch.cat([q, self.vector(v_c)], dim=-1)
            k = torch.cat([k, dense(row_map(v_h, self.vector))], dim=-1)
        sim = None
        if self.simscore is not None or (self.simtier is not None and counts is None):
            with full_precision(v_c):   # fp32 under a CUDA autocast: the same tiers as the pipeline's
                sim = similarity(v_c, v_h, rows)                       # Eq. 2, (nnz,)
        if self.simscore is not None:                                  # SimScore
            q, k = self.simscore(q, k, sim)
        groups = None                                                  # serving: shared histories
        if self.share_history and self.simscore is None:
            groups = history_groups(batch["mask"], batch["hist_item"], batch["hist_category"],
                                    *([batch["hist_item_v"]] if "hist_item_v" in batch else []))
        pooled = self.interest(q, k, rows, groups)                     # DIN, (B, Dq)
        parts = [q, pooled, *self.ids.context(batch["region"], batch.get("user"), batch.get("position"))]
        if self.simtier is not None:                                   # SimTier (Algorithm 1)
            parts.append(self.simtier(sim, rows, b, counts))
        aux: dict[str, torch.Tensor] = {}
        if self.knowledge is not None:                                 # MAKE knowledge utilisation
            knowledge, make_logit = self.knowledge(v_c, v_h, rows, groups)
            if make_logit is not None:
                aux["make"] = make_logit                               # Eq. 5 as an auxiliary loss
            parts.append(knowledge)
        aux_losses: dict[str, torch.Tensor] = {}
        if self.debias is not None:                                    # VisualDebias (issue 22)
            adjusted = self.debias(v_c)
            parts.append(adjusted)
            if self.training and "impressions" in batch:
                aux_losses = self.debias.losses(v_c, adjusted, batch["impressions"], batch["item_v"])
        logits = self.head(torch.cat(parts, dim=-1))
        out = {"logit": logits[self.TASK], "logits": logits, "aux_logits": aux}
        if aux_losses:
            out["aux_losses"] = aux_losses
        return out

    def loss(self, out: dict, batch: dict[str, torch.Tensor], aux_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """One named term per label: ``click`` (and ``make``, MAKE's Eq. 5 on the click, when MAKE trains
        with the model), the debiasing terms ``debias_adv`` and ``debias_con`` (weighted by
        ``cfg.debias``) when the batch carries impression counts, plus ``total``."""
        weights = {self.TASK: 1.0, **{name: aux_weight for name in out["aux_logits"]}}
        logits = {**out["logits"], **out["aux_logits"]}
        terms = MultiTaskLoss(weights)(logits, {name: batch["label"] for name in weights})
        d = self.cfg.debias
        for name, w in (("debias_adv", d.adv_weight), ("debias_con", d.con_weight)):
            if name in out.get("aux_losses", {}):
                terms[name] = w * out["aux_losses"][name]
                terms["total"] = terms["total"] + terms[name]
        return terms

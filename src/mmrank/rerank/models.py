"""Re-rankers composed of :mod:`mmrank.models.blocks`: ARMMT (JD.com), SEQ+MD, and the baselines.

A :class:`ListModel` scores every candidate of a padded list batch (:func:`mmrank.rerank.data.make_batch`)
and returns ``{task: logit (B, C)}``. What differs between the models is the configuration
(:data:`MODELS`):

* backbone ``plain``: ID embeddings (item, category), DIN target attention over the user's clicks in the
  candidate's category (ID embeddings), numeric features (price and sales, also relative to the list,
  production score). No representation.
* backbone ``armmt``: also, per modality (image, text), the frozen representation through a linear map,
  a personalised representation (target attention over the representations of the user's clicks in
  the candidate's category), and the query match (the query's representation against the candidate's);
  modality features fused by **CAFU** (or concatenation), context = query + user.
* list encoder: ``mpsa`` (ARMMT's multi-perspective self-attention on multimodal, price, sales), ``transformer``
  (PRM), or ``none`` (pointwise).
* heads: ``independent`` towers (ARMMT: CVR main + CTR auxiliary, loss ``L_cvr + lambda L_ctr``),
  ``seq`` (SEQ, + region mask = SEQ+MD), ``mmoe``, ``esmm``.

The list is scored as a set: no model reads the logged position of a candidate.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mmrank.config import StrictModel
from mmrank.models.layers import pack
from mmrank.errors import ConfigError
from mmrank.models import create
from mmrank.models.blocks import IdFeatures, InterestEncoder
from mmrank.rerank.data import NUMERIC, PRICE_FEATURES, SALES_FEATURES

DEFAULT_LAMBDA = 0.1


class ListModelConfig(StrictModel):
    """Architecture of a re-ranker."""

    backbone: Literal["plain", "armmt"] = "armmt"
    fusion: Literal["cafu", "concat"] = "cafu"
    list_encoder: Literal["none", "transformer", "mpsa"] = "mpsa"
    modalities: list[Literal["image", "text"]] = Field(default_factory=lambda: ["image", "text"])
    heads: Literal["independent", "seq", "mmoe", "esmm"] = "independent"
    tasks: list[Literal["click", "cart", "purchase"]] = Field(default_factory=lambda: ["click", "purchase"])
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"purchase": 1.0, "click": DEFAULT_LAMBDA})
    region_mask: bool = False
    rank_task: Literal["click", "cart", "purchase"] = "purchase"
    emb_dim: int = Field(16, ge=1)
    mm_dim: int = Field(32, ge=1, description="width of each modality feature and of the fused one")
    hidden: int = Field(64, ge=8, description="width of the candidate representation")
    att_hidden: list[int] = Field(default_factory=lambda: [32, 16])
    head_hidden: list[int] = Field(default_factory=lambda: [64, 32])
    list_heads: int = Field(2, ge=1)
    list_ff: int = Field(128, ge=1)
    objective: Literal["logged", "ips-listwise"] = Field(
        "logged", description="logged: the multi-task loss on the shown candidates (their labels as logged); "
        "ips-listwise: a softmax over every retrieved candidate, each shown one weighted by its gain / its "
        "exposure propensity under the logging policy (counterfactual, see mmrank.rerank.trainer)")


_MULTI = dict(tasks=["click", "cart", "purchase"], loss_weights={"click": 1.0, "cart": 1.0, "purchase": 1.0})
# name -> what differs from ListModelConfig's defaults (= ARMMT)
MODELS: dict[str, dict] = {
    "dnn": dict(backbone="plain", list_encoder="none"),
    "armmt": dict(),
    "armmt-concat": dict(fusion="concat"),
    "prm": dict(backbone="plain", list_encoder="transformer"),
    "mmoe": dict(heads="mmoe", **_MULTI),
    "esmm": dict(heads="esmm", **_MULTI),
    "seqmd": dict(heads="seq", region_mask=True, **_MULTI),
    "seqmd-plain": dict(backbone="plain", list_encoder="none", heads="seq", region_mask=True, **_MULTI),
    # counterfactual learners: choose among every retrieved candidate (propensity-weighted listwise loss)
    "dnn-ips": dict(backbone="plain", list_encoder="none", objective="ips-listwise",
                    loss_weights={"purchase": 1.0, "click": 0.0}),
    "armmt-ips": dict(objective="ips-listwise", loss_weights={"purchase": 1.0, "click": 0.0}),
    # ablations
    "armmt-lambda0": dict(loss_weights={"purchase": 1.0, "click": 0.0}),
    "armmt-lambda0.3": dict(loss_weights={"purchase": 1.0, "click": 0.3}),
    "armmt-lambda1": dict(loss_weights={"purchase": 1.0, "click": 1.0}),
    "armmt-no-mpsa": dict(list_encoder="none"),
    "armmt-no-image": dict(modalities=["text"]),
    "seqmd-no-mask": dict(heads="seq", region_mask=False, **_MULTI),
}
BASELINES = ("logged", "prod-order")  # no training: the logged lists; the production score's order
ABLATIONS = {"armmt-concat": "CAFU vs concatenation", "armmt-lambda0": "lambda = 0",
             "armmt-lambda0.3": "lambda = 0.3", "armmt-lambda1": "lambda = 1", "armmt-no-mpsa": "without MPSA",
             "armmt-no-image": "image features removed", "seqmd-no-mask": "SEQ+MD with the region mask off"}


def model_config(name: str, **overrides) -> ListModelConfig:
    """The configuration of model ``name`` (:data:`MODELS`)."""
    if name not in MODELS:
        raise ConfigError(f"--model: expected one of {', '.join(['logged', *MODELS])}, got {name!r}")
    return ListModelConfig.model_validate({**MODELS[name], **overrides})


class ListModel(nn.Module):
    """A re-ranker (see the module doc).

    Args:
        cfg: :class:`ListModelConfig`.
        n_items, n_users, n_categories, n_regions: vocabulary sizes (:class:`~mmrank.rerank.data.ListSpace`).
        tables: ``{modality: (V, D)}`` frozen representations (ARMMT backbone), rows by ``item_v``.
        query_dim: width of the query vectors (the batch carries them as ``query_vec (B, D)``).

    ``forward(batch) -> {task: (B, C)}`` logits (padding positions hold garbage; use ``batch["pad"]``).
    """

    def __init__(self, cfg: ListModelConfig, *, n_items: int, n_users: int, n_categories: int, n_regions: int,
                 tables: dict[str, torch.Tensor] | None = None, query_dim: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        e, d, h = cfg.emb_dim, cfg.mm_dim, cfg.hidden
        self.ids: IdFeatures = create("id_features", n_items=n_items, n_categories=n_categories,
                                      n_regions=n_regions, n_users=n_users, dim=e)
        self.id_interest: InterestEncoder = create("interest", dim=2 * e, hidden=cfg.att_hidden, act="relu",
                                                   pool="mean")
        in_dim = 4 * e + len(NUMERIC)
        self.mm = cfg.backbone == "armmt"
        if self.mm:
            if not tables:
                raise ConfigError("the ARMMT backbone needs frozen representations (tables=)")
            missing = [m for m in cfg.modalities if m not in tables]
            if missing:
                raise ConfigError(f"no {missing[0]!r} representations for the ARMMT backbone")
            for m in cfg.modalities:
                self.register_buffer(f"table_{m}", tables[m].float(), persistent=False)
            vdim = int(tables[cfg.modalities[0]].shape[1])
            self.proj = nn.ModuleDict({m: nn.Linear(vdim, d) for m in cfg.modalities})
            self.query_proj = nn.Linear(query_dim or vdim, d)
            self.mm_interest = nn.ModuleDict({m: create("interest", dim=d, hidden=cfg.att_hidden, act="relu",
                                                        pool="mean") for m in cfg.modalities})
            self.modal = nn.ModuleDict({m: nn.Sequential(nn.Linear(3 * d + 1, d), nn.ReLU()) for m in cfg.modalities})
            self.fusion = create(cfg.fusion, modalities=cfg.modalities, dim=d, context_dim=d + e)
            in_dim += d
        self.inp = nn.Sequential(nn.Linear(in_dim, h), nn.ReLU())
        self.encoder = None
        if cfg.list_encoder == "transformer":
            self.encoder = create("transformer", dim=h, heads=cfg.list_heads, ff=cfg.list_ff)
        elif cfg.list_encoder == "mpsa":
            views = {"price": len(PRICE_FEATURES), "sales": len(SALES_FEATURES)}
            if self.mm:
                views = {"multimodal": d, **views}
            self.encoder = create("mpsa", dim=h, perspectives=views, heads=cfg.list_heads, ff=cfg.list_ff)
        head_in = h + 2 * e
        if cfg.heads == "independent":
            self.heads = create("heads", in_dim=head_in, tasks=cfg.tasks, hidden=cfg.head_hidden)
        elif cfg.heads == "seq":
            self.heads = create("seq_heads", in_dim=head_in, tasks=cfg.tasks, hidden=cfg.head_hidden,
                                n_regions=n_regions, region_mask=cfg.region_mask)
        elif cfg.heads == "mmoe":
            self.heads = create("mmoe", in_dim=head_in, tasks=cfg.tasks, expert_dim=cfg.head_hidden[0],
                                hidden=cfg.head_hidden[1:])
        else:
            self.heads = create("esmm", in_dim=head_in, tasks=cfg.tasks, hidden=cfg.head_hidden)
        for w in cfg.loss_weights:
            if w not in cfg.tasks:
                raise ConfigError(f"loss term {w!r} has no head (tasks: {cfg.tasks})")
        self.loss = create("multitask_loss", weights=cfg.loss_weights)

    def _filtered_interest(self, enc: InterestEncoder, query: torch.Tensor, keys: torch.Tensor,
                           fmask: torch.Tensor) -> torch.Tensor:
        """Target attention of each candidate ``query (B, C, D)`` over the history ``keys (B, L, D)`` at
        ``fmask (B, C, L)`` (the user's clicks in the candidate's category); zero without any."""
        b, c, length = fmask.shape
        idx, rows = pack(fmask.reshape(b * c, length))
        hist_rows = torch.div(rows, c, rounding_mode="floor") * length + idx % length
        k = keys.reshape(b * length, -1).index_select(0, hist_rows)
        return enc(query.reshape(b * c, -1), k, rows).view(b, c, -1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        b, c = batch["item"].shape
        pad = batch["pad"]
        tgt = self.ids.target(batch["item"], batch["category"])                       # (B, C, 2E)
        hist = self.ids.target(batch["hist_item"], batch["hist_category"])           # (B, L, 2E)
        fmask = ((batch["hist_category"].unsqueeze(1) == batch["category"].unsqueeze(2))
                 & batch["hist_mask"].unsqueeze(1) & ~pad.unsqueeze(2))              # (B, C, L)
        parts = [tgt, self._filtered_interest(self.id_interest, tgt, hist, fmask), batch["num"]]
        user = self.ids.user_emb(batch["user"])                                       # (B, E)
        region = self.ids.region_emb(batch["region"])
        views = {"price": batch["num"][..., list(PRICE_FEATURES)], "sales": batch["num"][..., list(SALES_FEATURES)]}
        if self.mm:
            q = self.query_proj(batch["query_vec"])                                   # (B, d)
            feats = {}
            for m in cfg.modalities:
                table = getattr(self, f"table_{m}")
                v = table.index_select(0, batch["item_v"].reshape(-1)).view(b, c, -1)
                hv = table.index_select(0, batch["hist_item_v"].reshape(-1)).view(b, batch["hist_item_v"].shape[1], -1)
                pv, ph = self.proj[m](v), self.proj[m](hv)
                personal = self._filtered_interest(self.mm_interest[m], pv, ph, fmask)
                sim = (v * batch["query_vec"].unsqueeze(1)).sum(-1, keepdim=True)       # query match
                feats[m] = self.modal[m](torch.cat([pv, personal, pv * q.unsqueeze(1), sim], dim=-1))
            ctx = torch.cat([q, user], dim=-1).unsqueeze(1).expand(b, c, -1)
            fused = self.fusion(feats, ctx)                                           # (B, C, d)
            parts.append(fused)
            views["multimodal"] = fused
        x = self.inp(torch.cat(parts, dim=-1))                                        # (B, C, H)
        if cfg.list_encoder == "transformer":
            x = self.encoder(x, pad)
        elif cfg.list_encoder == "mpsa":
            x = self.encoder(x, views, pad)
        ctx = torch.cat([user, region], dim=-1).unsqueeze(1).expand(b, c, -1)
        flat = torch.cat([x, ctx], dim=-1).reshape(b * c, -1)
        out = self.heads(flat, batch["region"].repeat_interleave(c))
        return {t: v.view(b, c) for t, v in out.items()}

    def rank_scores(self, logits: dict[str, torch.Tensor], task: str | None = None) -> torch.Tensor:
        """The scores a list is ordered by: the ``rank_task`` head (the CVR for ARMMT)."""
        return logits[task or self.cfg.rank_task]

    def task_scores(self, logits: dict[str, torch.Tensor], task: str) -> torch.Tensor:
        """Scores for ``task``'s AUC: its own head, else the ranking head (e.g. ARMMT has no cart head)."""
        return logits[task] if task in logits else logits[self.cfg.rank_task]

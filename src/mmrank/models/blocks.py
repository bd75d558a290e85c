"""Named blocks that ranking models are composed of (CTR strategies, re-rankers, multi-task heads).

Each block is an ``nn.Module`` with explicit sizes and documented shapes; :mod:`mmrank.models` creates
them by name (:func:`mmrank.models.create`). The layers themselves live in :mod:`mmrank.models.layers`
(``TargetAttention``, ``SimTier``, ``MLP``, ...); blocks wrap them into the parts a model is made of:

* features: :class:`IdFeatures` (ID embeddings), :class:`VectorFeature` (Vector), :class:`SimScoreFeature`,
  :class:`SimTierFeature`, :class:`MakeKnowledge`;
* :class:`InterestEncoder`: target attention over a behaviour sequence (packed);
* fusion: :class:`ConcatFusion`, :class:`CAFU` (ARMMT's context-aware fusion unit);
* list encoders: :class:`TransformerListEncoder` (PRM), :class:`MultiPerspectiveSelfAttention` (ARMMT);
* :class:`RegionMask` (SEQ+MD's feature-generated mask gating shared and regional parameters);
* heads returning ``{task: logit}``: :class:`TaskHeads`, :class:`SequentialHeads` (SEQ),
  :class:`MMoEHeads`, :class:`ESMMHeads`;
* :class:`MultiTaskLoss`: one named term per label.

Example::

    >>> import torch
    >>> heads = TaskHeads(8, ["click", "purchase"], hidden=[4])
    >>> sorted(heads(torch.randn(3, 8)))
    ['click', 'purchase']
    >>> loss = MultiTaskLoss({"click": 0.1, "purchase": 1.0})
    >>> terms = loss(heads(torch.randn(3, 8)), {"click": torch.ones(3), "purchase": torch.zeros(3)})
    >>> sorted(terms)
    ['click', 'purchase', 'total']
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmrank.models.layers import MLP, SimScore, SimTier, TargetAttention, lookup

# ---------------------------------------------------------------------------------------------------
# Features


class IdFeatures(nn.Module):
    """ID embeddings: item, category, region, user and position, ``N(0, 0.01)`` initialised.

    Args:
        n_items, n_categories, n_regions, n_users, n_positions: vocabulary sizes (0 = padding).
        dim: embedding width E.
        use_user, use_position: whether those tables exist.
        sparse: item and user tables get sparse gradients.

    ``target(item (...), category (...)) -> (..., 2E)``; ``context(region (B,), user (B,), position (B,))
    -> [(B, E), ...]`` (region, then user and position when used).
    """

    MODULES = ("item_emb", "cat_emb", "user_emb", "region_emb", "pos_emb")

    def __init__(self, n_items: int, n_categories: int, n_regions: int, n_users: int, dim: int, *,
                 n_positions: int = 0, use_user: bool = True, use_position: bool = False,
                 sparse: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.item_emb = nn.Embedding(n_items, dim, padding_idx=0, sparse=sparse)
        self.cat_emb = nn.Embedding(n_categories, dim, padding_idx=0)
        self.region_emb = nn.Embedding(n_regions, dim)
        self.user_emb = nn.Embedding(n_users, dim, sparse=sparse) if use_user else None
        self.pos_emb = nn.Embedding(n_positions, dim) if use_position else None
        for emb in (self.item_emb, self.cat_emb, self.region_emb, self.user_emb, self.pos_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.01)

    @property
    def context_dim(self) -> int:
        return self.dim * (1 + (self.user_emb is not None) + (self.pos_emb is not None))

    def target(self, item: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return torch.cat([lookup(self.item_emb, item), lookup(self.cat_emb, category)], dim=-1)

    def context(self, region: torch.Tensor, user: torch.Tensor | None = None,
                position: torch.Tensor | None = None) -> list[torch.Tensor]:
        parts = [lookup(self.region_emb, region)]
        if self.user_emb is not None:
            parts.append(lookup(self.user_emb, user))
        if self.pos_emb is not None:
            parts.append(lookup(self.pos_emb, position))
        return parts

    def id_parameters(self) -> list[nn.Parameter]:
        return [p for name in self.MODULES if getattr(self, name) is not None
                for p in getattr(self, name).parameters()]


class VectorFeature(nn.Module):
    """Vector (Table 3): a representation through a linear map, ``(..., D) -> (..., out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.proj(v)


class SimScoreFeature(nn.Module):
    """SimScore (Table 3): ``s_i = v_i . v_c`` joins each history key; the query gets a constant 1.

    ``forward(q (B, Dq), k (nnz, Dk), sim (nnz,)) -> (q (B, Dq+1), k (nnz, Dk+1))``.
    """

    out_dim = 1

    def __init__(self) -> None:
        super().__init__()
        self.score = SimScore()

    def forward(self, q: torch.Tensor, k: torch.Tensor, sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([q, q.new_ones(q.shape[0], 1)], dim=-1), torch.cat([k, sim.unsqueeze(-1)], dim=-1))


class SimTierFeature(nn.Module):
    """SimTier (Eq. 2, Algorithm 1) counts divided by the history capacity L: ``(B, N)``.

    ``forward(sim (nnz,), rows (nnz,), batch, counts=None)``: ``counts`` precomputed by the data
    pipeline are used as they are; otherwise they are counted from the packed similarities.
    """

    def __init__(self, n_tiers: int, history_len: int) -> None:
        super().__init__()
        self.simtier = SimTier(n_tiers)
        self.history_len = history_len
        self.out_dim = n_tiers

    def forward(self, sim: torch.Tensor | None, rows: torch.Tensor | None, batch: int,
                counts: torch.Tensor | None = None) -> torch.Tensor:
        if counts is None:
            counts = self.simtier.counts_from_scores(sim, rows, batch)
        return counts / self.history_len


class MakeKnowledge(nn.Module):
    """MAKE's knowledge utilisation (Sec. 4.3): a (pre-trained) MAKE module's knowledge, standardised per
    feature (its scale is set by pre-training), frozen or trained with the model.

    Args:
        module: a :class:`mmrank.ctr.models.MakeModule` (anything with ``knowledge_dim`` and
            ``forward_packed(target, hist, rows) -> {"logit", "knowledge"}``).
        frozen: keep the module fixed (after E > 0 pre-training epochs).

    ``forward(v_c (B, D), v_h (nnz, D), rows (nnz,)) -> (knowledge (B, K), aux logit (B,) or None)``: the
    aux logit (Eq. 5 as an auxiliary loss) only when the module trains with the model.
    """

    def __init__(self, module: nn.Module, frozen: bool = False) -> None:
        super().__init__()
        self.module = module
        self.out_dim = module.knowledge_dim
        self.norm = nn.BatchNorm1d(module.knowledge_dim)
        self.frozen = False
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        for p in self.module.parameters():
            p.requires_grad_(not frozen)

    def forward(self, v_c: torch.Tensor, v_h: torch.Tensor, rows: torch.Tensor,
                groups: list | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.frozen:
            with torch.no_grad():
                self.module.eval()
                out = self.module.forward_packed(v_c, v_h, rows, groups=groups)
            return self.norm(out["knowledge"]), None
        out = self.module.forward_packed(v_c, v_h, rows, groups=groups)
        return self.norm(out["knowledge"]), out["logit"]


class InterestEncoder(nn.Module):
    """A user's interest in a target: DIN target attention over the (packed) behaviour sequence.

    ``forward(query (B, D), keys (nnz, D), rows (nnz,)) -> (B, D)``; ``dim`` is D.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (80, 40), act: str = "prelu", pool: str = "sum") -> None:
        super().__init__()
        self.attention = TargetAttention(dim, hidden, act, pool=pool)
        self.dim = dim

    def forward(self, query: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                groups: list | None = None) -> torch.Tensor:
        return self.attention.forward_packed(query, keys, rows, groups)[0]


# ---------------------------------------------------------------------------------------------------
# Fusion


class ConcatFusion(nn.Module):
    """Concatenation of M modality features, through a linear map: ``{m: (..., d)} -> (..., d)``."""

    def __init__(self, modalities: Sequence[str], dim: int, context_dim: int = 0) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.proj = nn.Linear(len(self.modalities) * dim, dim)
        self.out_dim = dim

    def forward(self, feats: dict[str, torch.Tensor], context: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(torch.cat([feats[m] for m in self.modalities], dim=-1))


class CAFU(nn.Module):
    """ARMMT's Context-Aware Fusion Unit.

    Each modality's features are mean-pooled into an initial weight (one number per modality),
    concatenated with the context (query, user), and an MLP turns that into per-modality weights
    (softmax over modalities); the output is the weighted sum of the modality features.

    Args:
        modalities: names, e.g. ``["image", "text"]``.
        dim: width d of every modality feature.
        context_dim: width of the context.
        hidden: the MLP's hidden widths.

    ``forward({m: (..., d)}, context (..., c)) -> (..., d)``; ``last_weights`` holds the weights
    ``(..., M)`` of the latest call (for inspection).
    """

    def __init__(self, modalities: Sequence[str], dim: int, context_dim: int, hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.mlp = MLP(len(self.modalities) + context_dim, list(hidden), out_dim=len(self.modalities), act="relu")
        self.out_dim = dim
        self.last_weights: torch.Tensor | None = None

    def forward(self, feats: dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        stack = torch.stack([feats[m] for m in self.modalities], dim=-2)       # (..., M, d)
        init = stack.mean(-1)                                                   # (..., M)
        w = torch.softmax(self.mlp(torch.cat([init, context], dim=-1)), dim=-1)  # (..., M)
        self.last_weights = w.detach()
        return (w.unsqueeze(-1) * stack).sum(-2)


# ---------------------------------------------------------------------------------------------------
# List encoders


class TransformerListEncoder(nn.Module):
    """A transformer encoder over a list's candidates (PRM-style): ``(B, C, H), pad (B, C) -> (B, C, H)``.

    ``pad`` is True at padding. No positional encoding: the list is scored as a set (the model must not
    read the logged order it re-ranks).
    """

    def __init__(self, dim: int, heads: int = 2, layers: int = 1, ff: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_dim = dim

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, src_key_padding_mask=pad)


class MultiPerspectiveSelfAttention(nn.Module):
    """ARMMT's Multi-Perspective Self-Attention: a transformer encoder over the list on the fused
    multimodal, price and sales features, then one attention per perspective that extracts higher-order
    features: perspective ``p`` (multimodal, price, sales) computes the attention weights between
    candidates from its own features, over the encoder's output.

    Args:
        dim: width H of the candidate representation.
        perspectives: ``{name: input width}`` of each perspective's features.
        att_dim: width of each perspective's queries and keys.

    ``forward(x (B, C, H), views {p: (B, C, d_p)}, pad (B, C)) -> (B, C, H)``.
    """

    def __init__(self, dim: int, perspectives: dict[str, int], heads: int = 2, layers: int = 1,
                 ff: int = 64, att_dim: int = 16) -> None:
        super().__init__()
        self.encoder = TransformerListEncoder(dim, heads, layers, ff)
        self.names = list(perspectives)
        self.q = nn.ModuleDict({p: nn.Linear(d, att_dim) for p, d in perspectives.items()})
        self.k = nn.ModuleDict({p: nn.Linear(d, att_dim) for p, d in perspectives.items()})
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim * (1 + len(self.names)), dim)
        self.scale = 1.0 / math.sqrt(att_dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor, views: dict[str, torch.Tensor], pad: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x, pad)
        v = self.v(h)
        outs = [h]
        neg = pad.unsqueeze(1)                                                  # (B, 1, C)
        for p in self.names:
            s = torch.einsum("bcd,bed->bce", self.q[p](views[p]), self.k[p](views[p])) * self.scale
            a = torch.softmax(s.masked_fill(neg, float("-inf")), dim=-1)
            outs.append(torch.einsum("bce,bed->bcd", a, v))
        return self.out(torch.cat(outs, dim=-1))


# ---------------------------------------------------------------------------------------------------
# Region mask (SEQ+MD)


class RegionMask(nn.Module):
    """SEQ+MD's multi-distribution module: a mask generated from the features gates a shared and a
    regional linear map, ``y = m * (W_s x) + (1 - m) * (W_r x)``, ``m = sigmoid(MLP([x, e_r]))``.

    Args:
        in_dim, out_dim: widths of ``x`` and ``y``.
        n_regions: number of regions (one regional map each).
        region_dim: width of the region embedding the mask generator reads.

    ``forward(x (N, in), region (N,)) -> (N, out)``; ``enabled=False`` keeps the shared map only (the
    ablation ``region mask off``).
    """

    def __init__(self, in_dim: int, out_dim: int, n_regions: int, region_dim: int = 8, enabled: bool = True) -> None:
        super().__init__()
        self.shared = nn.Linear(in_dim, out_dim)
        self.enabled = enabled
        self.out_dim = out_dim
        if enabled:
            self.regional_w = nn.Parameter(torch.empty(n_regions, in_dim, out_dim))
            self.regional_b = nn.Parameter(torch.zeros(n_regions, out_dim))
            nn.init.normal_(self.regional_w, std=1.0 / math.sqrt(in_dim))
            self.region_emb = nn.Embedding(n_regions, region_dim)
            self.gate = nn.Sequential(nn.Linear(in_dim + region_dim, out_dim))

    def mask(self, x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(torch.cat([x, self.region_emb(region)], dim=-1)))

    def forward(self, x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        y = self.shared(x)
        if not self.enabled:
            return y
        # every region's map on every row (R is small), then each row's own: cheaper than gathering
        # an (in, out) matrix per row
        every = torch.einsum("ni,rio->nro", x, self.regional_w) + self.regional_b        # (N, R, out)
        r = every.gather(1, region.view(-1, 1, 1).expand(-1, 1, every.shape[-1])).squeeze(1)
        m = self.mask(x, region)
        return m * y + (1 - m) * r


# ---------------------------------------------------------------------------------------------------
# Heads: {task: logit}


class TaskHeads(nn.Module):
    """One independent MLP tower per task: ``(N, in) -> {task: (N,)}``."""

    def __init__(self, in_dim: int, tasks: Sequence[str], hidden: Sequence[int] = (64, 32), act: str = "relu") -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.towers = nn.ModuleDict({t: MLP(in_dim, list(hidden), out_dim=1, act=act) for t in self.tasks})

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {t: self.towers[t](x).squeeze(-1) for t in self.tasks}


class SequentialHeads(nn.Module):
    """SEQ: sequential multi-task towers (click -> cart -> purchase); each task's tower receives the
    previous task's representation (its last hidden layer) beside the shared input. With a
    :class:`RegionMask` as each tower's first layer when ``region_mask`` (SEQ+MD).

    ``forward(x (N, in), region (N,)) -> {task: (N,)}``.
    """

    def __init__(self, in_dim: int, tasks: Sequence[str], hidden: Sequence[int] = (64, 32), n_regions: int = 1,
                 region_mask: bool = True) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("SequentialHeads needs at least one hidden layer")
        self.tasks = list(tasks)
        h = list(hidden)
        self.first = nn.ModuleDict()
        self.rest = nn.ModuleDict()
        for i, t in enumerate(self.tasks):
            d = in_dim + (h[-1] if i > 0 else 0)
            self.first[t] = RegionMask(d, h[0], n_regions, enabled=region_mask)
            self.rest[t] = MLP(h[0], h[1:], out_dim=None, act="relu")
        self.out = nn.ModuleDict({t: nn.Linear(h[-1], 1) for t in self.tasks})

    def forward(self, x: torch.Tensor, region: torch.Tensor) -> dict[str, torch.Tensor]:
        out, prev = {}, None
        for t in self.tasks:
            inp = x if prev is None else torch.cat([x, prev], dim=-1)
            prev = self.rest[t](F.relu(self.first[t](inp, region)))
            out[t] = self.out[t](prev).squeeze(-1)
        return out


class MMoEHeads(nn.Module):
    """MMoE (Ma et al., KDD'18): shared experts, one softmax gate and one tower per task."""

    def __init__(self, in_dim: int, tasks: Sequence[str], n_experts: int = 4, expert_dim: int = 32,
                 hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.experts = nn.ModuleList([MLP(in_dim, [expert_dim], out_dim=None, act="relu") for _ in range(n_experts)])
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, n_experts) for t in self.tasks})
        self.towers = nn.ModuleDict({t: MLP(expert_dim, list(hidden), out_dim=1, act="relu") for t in self.tasks})

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        e = torch.stack([ex(x) for ex in self.experts], dim=1)                  # (N, K, d)
        out = {}
        for t in self.tasks:
            g = torch.softmax(self.gates[t](x), dim=-1).unsqueeze(-1)            # (N, K, 1)
            out[t] = self.towers[t]((g * e).sum(1)).squeeze(-1)
        return out


def _logit_from_log_prob(logp: torch.Tensor) -> torch.Tensor:
    """``log p -> log p - log(1 - p)``, stable for p near 0 and 1."""
    logp = logp.clamp(max=-1e-7)
    return logp - torch.log(-torch.expm1(logp))


class ESMMHeads(nn.Module):
    """ESMM (Ma et al., SIGIR'18) over a chain of tasks: ``p(task_k) = prod_{j<=k} sigmoid(tower_j)``,
    every term trained on impressions (the entire space). Returns the logits of those products."""

    def __init__(self, in_dim: int, tasks: Sequence[str], hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.towers = nn.ModuleDict({t: MLP(in_dim, list(hidden), out_dim=1, act="relu") for t in self.tasks})

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out, logp = {}, None
        for i, t in enumerate(self.tasks):
            z = self.towers[t](x).squeeze(-1)
            if i == 0:
                out[t], logp = z, F.logsigmoid(z)
            else:
                logp = logp + F.logsigmoid(z)
                out[t] = _logit_from_log_prob(logp)
        return out


# ---------------------------------------------------------------------------------------------------
# Loss


class MultiTaskLoss(nn.Module):
    """One named binary cross-entropy term per label: ``{task: weight}``.

    ``forward(logits {task: (N,)}, labels {task: (N,)}, mask (N,) or None) -> {task: weighted term,
    "total": sum}``; a task with weight 0 still reports its (zero-weighted) term.
    """

    def __init__(self, weights: dict[str, float]) -> None:
        super().__init__()
        self.weights = dict(weights)

    def forward(self, logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        total = None
        for task, w in self.weights.items():
            if task not in logits:
                raise KeyError(f"loss term {task!r}: the model has no head {task!r} (heads: {sorted(logits)})")
            z, y = logits[task], labels[task].to(logits[task].dtype)
            if mask is not None:
                z, y = z[mask], y[mask]
            term = w * F.binary_cross_entropy_with_logits(z, y)
            terms[task] = term
            total = term if total is None else total + term
        terms["total"] = total
        return terms

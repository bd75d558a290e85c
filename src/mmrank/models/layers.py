"""Reusable ranking layers (FuxiCTR style: layers here; :mod:`mmrank.models.blocks` wraps them into the parts
that CTR models (:mod:`mmrank.ctr.models`) and re-rankers (:mod:`mmrank.rerank.models`) are made of).

Every layer takes its sizes explicitly and documents its shapes. Behaviour sequences are handled in
*packed* form where it pays: only the ``nnz`` valid (unpadded) history positions are computed, with
``rows (nnz,)`` saying which sample each belongs to. :func:`pack` turns ``(B, L, ...)`` + mask into
that form.

Example::

    >>> import torch
    >>> att = TargetAttention(dim=8, hidden=(16, 8))
    >>> q, k = torch.randn(4, 8), torch.randn(4, 5, 8)
    >>> mask = torch.ones(4, 5, dtype=torch.bool)
    >>> att(q, k, mask).shape
    torch.Size([4, 8])
    >>> SimTier(n_tiers=10)(torch.randn(4, 8), k, mask).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import functools
import shutil
import warnings
from collections.abc import Sequence

import torch
from torch import nn


def activation(name: str, dim: int | None = None) -> nn.Module:
    """``relu`` | ``prelu`` | ``sigmoid`` | ``tanh`` -> a module."""
    name = name.lower()
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}; expected relu, prelu, sigmoid or tanh")


def pack(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask (B, L) bool -> (flat index (nnz,) into B*L, rows (nnz,))."""
    idx = mask.reshape(-1).nonzero().squeeze(1)
    return idx, torch.div(idx, mask.shape[1], rounding_mode="floor")


def segment_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """``out[index[i]] += values[i]``: ``values (n, ...)``, ``index (n,)`` -> ``(size, ...)``. An
    ``index_add``; while exporting to ONNX a ``scatter_add`` (ONNX's ScatterND, which ``index_add``
    becomes, keeps one of repeated indices; ScatterElements with ``reduction="add"`` sums them)."""
    out = values.new_zeros((size, *values.shape[1:]))
    if torch.onnx.is_in_onnx_export():
        return out.scatter_add(0, index.view(-1, *([1] * (values.dim() - 1))).expand_as(values), values)
    return out.index_add(0, index, values)


def lookup(emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """``emb(ids)``, with a backward that sums the looked-up rows' gradients with one ``index_add_``
    (dense tables) or hands them over as they are (sparse tables) instead of ``nn.Embedding``'s, whose
    ``embedding_dense_backward`` is slower on a CPU (``benchmarks/ctr_throughput.py``) and whose sparse
    backward filters out the padding id with a boolean index even when the batch holds none. Same gradients
    (tested); the padding row's stays 0. Tables with ``max_norm`` or ``scale_grad_by_freq`` keep
    ``nn.Embedding``'s own path."""
    if (not (torch.is_grad_enabled() and emb.weight.requires_grad) or emb.max_norm is not None
            or emb.scale_grad_by_freq):
        return emb(ids)
    return _Lookup.apply(emb.weight, ids, emb.padding_idx, emb.sparse)


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None,  # noqa: ANN001
                sparse: bool) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.shape, ctx.padding_idx, ctx.sparse = weight.shape, padding_idx, sparse
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (ids,) = ctx.saved_tensors
        ids, grad = ids.reshape(-1), grad.reshape(-1, ctx.shape[1])
        pad = ctx.padding_idx
        if ctx.sparse:
            if pad is not None and bool((ids == pad).any()):
                keep = ids != pad
                ids, grad = ids[keep], grad[keep]
            return (torch.sparse_coo_tensor(ids.unsqueeze(0), grad, ctx.shape, check_invariants=False),
                    None, None, None)                  # ids were valid: the forward gathered them
        out = grad.new_zeros(ctx.shape).index_add_(0, ids, grad)
        if pad is not None:
            out[pad] = 0
        return out, None, None, None


class MLP(nn.Module):
    """Linear -> activation stack, optionally ending in a linear output layer.

    Args:
        in_dim: input width.
        hidden: widths of the hidden layers (each followed by ``act``).
        out_dim: width of a final linear layer (no activation), or ``None`` for none.
        act: activation name (see :func:`activation`).
        dropout: dropout after each hidden activation.

    ``forward(x (B, in_dim)) -> (B, out_dim or hidden[-1])``; ``forward_hidden`` also returns every
    hidden layer's output ``[(B, h) for h in hidden]`` (MAKE's intermediate outputs).

    Example::

        >>> MLP(10, [8, 4], out_dim=1)(torch.randn(3, 10)).shape
        torch.Size([3, 1])
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = 1, act: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.acts = nn.ModuleList()
        d = in_dim
        for h in hidden:
            self.layers.append(nn.Linear(d, h))
            self.acts.append(activation(act, h))
            d = h
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(d, out_dim) if out_dim is not None else None
        self.out_dim = out_dim if out_dim is not None else d

    def forward_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = []
        for lin, act in zip(self.layers, self.acts):
            x = self.dropout(act(lin(x)))
            hidden.append(x)
        if self.out is not None:
            x = self.out(x)
        return x, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_hidden(x)[0]


class TargetAttention(nn.Module):
    """DIN target attention: local activation unit + weighted sum pooling (Zhou et al., KDD'18).

    ``a_i = MLP([q, k_i, q - k_i, q * k_i])``, ``out = sum_i mask_i * a_i * k_i`` (no softmax, as in DIN).
    The first layer on the 4-way concatenation is computed as ``W_q q + W_k k_i + W_p (q * k_i)``:
    the same function class as one ``Linear(4D, h1)`` (``[A B C E] . [q, k, q-k, q*k] = (A+C) q +
    (B-C) k + E (q*k)``), with the query term computed once per sample instead of once per history
    position, and only the valid positions evaluated.

    Args:
        dim: width D of query and keys.
        hidden: widths of the attention MLP, e.g. ``(80, 40)``.
        act: activation of the attention MLP.
        pool: ``"sum"`` (DIN) or ``"mean"`` (the weighted sum divided by the number of valid positions,
            which keeps the output's scale independent of the history length; used over unit-norm
            representations).

    ``forward(query (B, D), keys (B, L, D), mask (B, L)) -> (B, D)``;
    ``forward_packed(query (B, D), keys (nnz, D), rows (nnz,)) -> ((B, D), scores (nnz,))``.

    Three layouts, the same function (tested to 1e-5, values and gradients):

    * packed: the ``nnz`` valid positions, gathered per sample;
    * full histories (every sample has L positions, as at a long-history user base): the packed keys
      are viewed as ``(B, L, D)`` without a copy, and the first layer is one ``(L, D) @ (D, h1)``
      product per sample with ``W_k + diag(q) W_p`` (half the FLOPs, no gathers);
    * padded: ragged histories copied into ``(B, L_max, D)`` with a mask, when at least
      ``pad_fill[bf16]`` of that grid is valid. Only the bf16 path pads by default (at 0.4): with
      ragged lengths (fill about 0.5) padding made bf16 training faster and fp32 training slower than
      packing (``benchmarks/ctr_throughput.py``'s runners with padding forced on and off, in one run).

    ``compiled = True`` runs the unit through ``torch.compile`` (one dynamic graph per layout, built on
    first use in a few seconds): it fuses the per-pair elementwise work (the product with the query,
    the adds and the activations, forward and backward) into the matmuls' neighbours, so the
    ``(nnz, h)`` activations are not each written and read again. Without a C++ compiler it warns
    once and runs eagerly. ``bf16 = True`` runs the unit's matmuls in bfloat16 (``torch.autocast`` on
    the inputs' device, CPU or CUDA; pooled output and scores returned in float32): about 3 significant
    digits per score instead of 7. Under an outer CUDA autocast (the trainers' bf16 on CUDA) the unit
    computes in bf16 whatever ``bf16`` says, and takes the bf16 path's layout (padding) too.
    """

    compiled = False
    bf16 = False
    pad_fill = {False: 2.0, True: 0.4}   # {bf16: least share of valid positions that is padded}; > 1: never

    def __init__(self, dim: int, hidden: Sequence[int] = (80, 40), act: str = "prelu",
                 pool: str = "sum") -> None:
        super().__init__()
        if not hidden:
            raise ValueError("TargetAttention needs at least one hidden layer")
        if pool not in ("sum", "mean"):
            raise ValueError(f"pool: expected 'sum' or 'mean', got {pool!r}")
        self.pool = pool
        h1 = hidden[0]
        self.dim = dim
        self.q_proj = nn.Linear(dim, h1)
        self.kp_proj = nn.Linear(2 * dim, h1, bias=False)  # [W_k W_p] on [k, q * k], one matmul
        self.act = activation(act, h1)
        self.score = MLP(h1, list(hidden[1:]), out_dim=1, act=act)

    def forward_packed(self, query: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                       groups: "list[tuple[int, int, int, int]] | None" = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        if groups is not None:
            return self._forward_groups(query, keys, groups)
        if torch.onnx.is_in_onnx_export():  # one graph for any batch: no layout chosen from the data
            return TargetAttention._packed_body(self, query, keys, rows)
        b, d = query.shape[0], keys.shape[1]
        length = uniform_length(rows, b)
        if length:  # every sample has `length` positions: the packed keys are a (B, L, D) block
            pooled, scores = self._run(TargetAttention._dense_body, query, keys.reshape(b, length, d))
            return pooled, scores.reshape(-1)
        layout = padded_layout(rows, b, self.pad_fill[self.bf16 or _autocasting(keys)])
        if layout is not None:  # most positions are valid: pad to (B, L_max, D), mask the rest
            flat, length = layout
            padded = keys.new_zeros(b * length, d).index_copy(0, flat, keys).view(b, length, d)
            mask = keys.new_zeros(b * length).index_fill_(0, flat, 1.0).view(b, length)
            pooled, scores = self._run(TargetAttention._dense_body, query, padded, mask)
            return pooled, scores.reshape(-1).index_select(0, flat)
        return self._run(TargetAttention._packed_body, query, keys, rows)

    def _run(self, body, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``body(self, *args)``, compiled and under bf16 autocast when the flags say so."""
        fast = _compiled(body) if self.compiled else None
        return (fast or _autocast)(body, self, *args)

    def _dense_body(self, query: torch.Tensor, keys: torch.Tensor,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``keys (B, L, D)``, every position valid or those of ``mask (B, L)`` (1.0 / 0.0; padding
        keys are 0). The first layer per sample is one ``(L, D) @ (D, h1)`` product with ``W_k +
        diag(q) W_p``: half the FLOPs of ``[k, q * k] @ [W_k W_p]`` and no ``(B L, 2D)`` input."""
        d = self.dim                                  # a constant to torch.compile: static slices
        w = self.kp_proj.weight                                            # (h1, 2D)
        m = w[:, :d].t() + query.unsqueeze(2) * w[:, d:].t()               # (B, D, h1)
        h = torch.baddbmm(self.q_proj(query).unsqueeze(1), keys, m)        # (B, L, h1)
        scores = self.score(self.act(h)).squeeze(-1)                       # (B, L)
        if mask is not None:
            scores = scores * mask
        pooled = (scores.unsqueeze(-1) * keys).sum(1)
        if self.pool == "mean":
            pooled = pooled / (keys.shape[1] if mask is None else mask.sum(1, keepdim=True).clamp(min=1))
        return pooled, scores

    def _packed_body(self, query: torch.Tensor, keys: torch.Tensor,
                     rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Gathers use index_select: its backward is a fast index_add; indexing with [] would
        # backpropagate through an accumulating index_put, several times slower on a CPU.
        q_rows = query.index_select(0, rows)
        h = self.kp_proj(torch.cat([keys, q_rows * keys], dim=-1)) + self.q_proj(query).index_select(0, rows)
        scores = self.score(self.act(h)).squeeze(-1)                       # (nnz,)
        pooled = segment_sum(scores.unsqueeze(-1) * keys, rows, query.shape[0])
        if self.pool == "mean":
            pooled = pooled / _counts(rows, query.shape[0]).unsqueeze(-1)
        return pooled, scores

    def _forward_groups(self, query: torch.Tensor, keys: torch.Tensor,
                        groups: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``a:z`` of each group share one history, the packed keys ``p0:p1``: every
        (sample, position) pair of the group as one dense ``(z - a, p1 - p0)`` block, the query term
        and the key term of the first layer computed once each, no gathers. Same values as the
        packed path up to float summation order; returns the packed scores too."""
        d = keys.shape[1]
        w_k, w_p = self.kp_proj.weight[:, :d], self.kp_proj.weight[:, d:]
        q_term = self.q_proj(query)                                       # (B, h1)
        pooled, scores = [], []
        for a, z, p0, p1 in groups:
            k = keys[p0:p1]                                               # (L, D)
            q = query[a:z]                                                # (b, D)
            h = (q[:, None, :] * k[None, :, :]) @ w_p.t() + (k @ w_k.t())[None] + q_term[a:z, None]
            s = self.score(self.act(h)).squeeze(-1)                       # (b, L)
            out = s @ k
            if self.pool == "mean":
                out = out / max(p1 - p0, 1)
            pooled.append(out)
            scores.append(s.reshape(-1))
        return torch.cat(pooled), torch.cat(scores)

    def forward_dense(self, query: torch.Tensor, keys: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``query (B, D), keys (B, L, D), mask (B, L)`` -> ``(B, D), scores (B, L)`` (0 at padding):
        :meth:`forward_packed` on the valid positions."""
        b, length, d = keys.shape
        idx, rows = pack(mask)
        pooled, s = self.forward_packed(query, keys.reshape(b * length, d).index_select(0, idx), rows)
        return pooled, s.new_zeros(b * length).index_add(0, idx, s).view(b, length)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_dense(query, keys, mask)[0]


def _autocasting(x: torch.Tensor) -> bool:
    """Whether an outer bf16/fp16 autocast (the trainer's on CUDA) is on for ``x``'s device: the unit
    then computes in low precision whatever ``bf16`` says, and takes the layout of the bf16 path."""
    return x.device.type != "cpu" and torch.is_autocast_enabled(x.device.type)


def _autocast(body, module: TargetAttention, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if module.bf16:   # on the device the inputs are on (CPU or CUDA); nested in an outer CUDA autocast too
        with torch.autocast(args[0].device.type, dtype=torch.bfloat16):
            pooled, scores = body(module, *args)
        return pooled.float(), scores.float()
    return body(module, *args)


@functools.cache
def _compiled(body):
    """``_autocast(body, ...)`` through ``torch.compile`` (dynamic shapes: any batch, history length
    and ``nnz``), or None when no C++ compiler is found (inductor needs one on a CPU, and Triton one to
    build its launchers on CUDA). The default inductor backend picks the kernels of the inputs' device:
    C++/OpenMP on a CPU, Triton on CUDA; nothing here names the CPU."""
    from torch._inductor import config

    if shutil.which(config.cpp.cxx[-1] or "g++") is None:
        warnings.warn("TargetAttention.compiled: no C++ compiler found; running eagerly", stacklevel=3)
        return None
    # One frame holds every variant (3 bodies x bf16 or not x training or not x MAKE's unit): more
    # than dynamo's default of 8 graphs per frame, after which it would run the rest eagerly.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(_autocast, dynamic=True)


def padded_layout(rows: torch.Tensor, batch: int, min_fill: float) -> tuple[torch.Tensor, int] | None:
    """Where the packed positions go in a ``(batch, L_max)`` grid: ``(flat index (nnz,), L_max)``, when
    ``rows`` is in :func:`pack` order and the valid positions fill at least ``min_fill`` of the grid;
    else None."""
    n = rows.numel()
    if batch == 0 or n == 0 or min_fill > 1 or bool((rows[1:] < rows[:-1]).any()):
        return None
    counts = torch.bincount(rows, minlength=batch)
    length = int(counts.max())
    if n < min_fill * batch * length:
        return None
    starts = counts.cumsum(0) - counts
    return rows * length + torch.arange(n, device=rows.device) - starts.index_select(0, rows), length


def uniform_length(rows: torch.Tensor, batch: int) -> int:
    """L when the packed ``rows (nnz,)`` hold every sample of ``batch`` for exactly L consecutive
    positions (``rows == [0]*L + [1]*L + ...``: full histories), else 0."""
    n = rows.numel()
    if batch == 0 or n == 0 or n % batch:
        return 0
    length = n // batch
    expect = torch.arange(batch, device=rows.device).unsqueeze(1).expand(batch, length)
    ok = torch.equal(rows.view(batch, length), expect)
    return length if ok else 0


def history_groups(mask: torch.Tensor, *hists: torch.Tensor,
                   max_groups: int = 16) -> list[tuple[int, int, int, int]] | None:
    """Runs of consecutive samples whose histories are the same (a serving batch: each request's
    candidates), as ``(a, z, p0, p1)``: samples ``a:z`` and the packed positions ``p0:p1`` of sample
    ``a`` (:func:`pack` order). None when there are more than ``max_groups`` runs (a training batch).
    ``hists`` are the (B, L) id tensors that must agree (item ids, categories, vector rows)."""
    b = mask.shape[0]
    if b == 0:
        return None
    same = (mask[1:] == mask[:-1]).all(1)
    for h in hists:
        same &= (h[1:] == h[:-1]).all(1)
    zero = torch.zeros(1, dtype=torch.long, device=mask.device)
    starts = torch.cat([zero, torch.nonzero(~same).flatten() + 1])
    if starts.numel() > max_groups:
        return None
    ptr = torch.cat([zero, mask.sum(1).cumsum(0)]).tolist()
    st = starts.tolist() + [b]
    return [(a, z, ptr[a], ptr[a + 1]) for a, z in zip(st[:-1], st[1:])]


def packed_similarity(target: torch.Tensor, hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``s_i = v_i . v_c`` (Eq. 2) at packed positions: ``target (B, D), hist (nnz, D), rows (nnz,) ->
    (nnz,)``. One batched (1 x D) @ (D x 1) product: on a CPU faster than multiply-and-sum and than an einsum
    over the padded ``(B, L, D)``."""
    return torch.bmm(hist.unsqueeze(1), target.index_select(0, rows).unsqueeze(2)).view(-1)


class SharedRows:
    """Packed rows ``(nnz, D)`` held as their distinct rows ``table (U, D)`` and ``index (nnz,)``.

    At serving, every candidate of a request carries the same behaviour items: 200 candidates x 50
    items are 10,000 packed rows of 50 distinct ones. Work that depends on the item alone (looking up
    its representation, projecting it) is then done on the U distinct rows and gathered afterwards,
    and the similarity to each target is one ``(U, D) @ (D, B)`` product. Same values as the dense
    rows, up to float summation order (``tests/test_models_layers.py``).
    """

    def __init__(self, table: torch.Tensor, index: torch.Tensor) -> None:
        self.table, self.index = table, index

    @classmethod
    def of(cls, ids: torch.Tensor, lookup, min_share: float = 2.0) -> "SharedRows | torch.Tensor":
        """``lookup(ids)`` as :class:`SharedRows` when each distinct id repeats ``min_share`` times on
        average, else the dense ``lookup(ids)``."""
        uniq, inv = torch.unique(ids, return_inverse=True)
        if uniq.numel() * min_share > ids.numel():
            return lookup(ids)
        return cls(lookup(uniq), inv)

    def map(self, fn) -> "SharedRows":
        """``fn`` (row-wise) applied to the distinct rows."""
        return SharedRows(fn(self.table), self.index)

    def dense(self) -> torch.Tensor:
        return self.table.index_select(0, self.index)


def dense(rows: "torch.Tensor | SharedRows") -> torch.Tensor:
    """Packed rows as a ``(nnz, D)`` tensor."""
    return rows.dense() if isinstance(rows, SharedRows) else rows


def row_map(rows: "torch.Tensor | SharedRows", fn) -> "torch.Tensor | SharedRows":
    """A row-wise ``fn`` on packed rows (on the distinct ones when they are shared)."""
    return rows.map(fn) if isinstance(rows, SharedRows) else fn(rows)


def similarity(target: torch.Tensor, hist: "torch.Tensor | SharedRows", rows: torch.Tensor) -> torch.Tensor:
    """:func:`packed_similarity` for dense or shared history rows: ``(nnz,)``. Shared rows whose
    ``(U, B)`` product is at most 4x the packed pairs take it; others gather from the (small)
    distinct table first."""
    if not isinstance(hist, SharedRows):
        return packed_similarity(target, hist, rows)
    if hist.table.shape[0] * target.shape[0] <= 4 * rows.numel():
        return (hist.table @ target.t())[hist.index, rows]
    return packed_similarity(target, hist.dense(), rows)


def _counts(rows: torch.Tensor, batch: int) -> torch.Tensor:
    if torch.onnx.is_in_onnx_export():  # ONNX has no bincount
        return segment_sum(torch.ones_like(rows, dtype=torch.float32), rows, batch).clamp(min=1)
    return torch.bincount(rows, minlength=batch).clamp_(min=1).to(torch.float32)


class SimScore(nn.Module):
    """SimScore: the similarity ``s_i = v_i . v_c`` of each history item to the target (Table 3).

    ``forward(target (B, D), hist (B, L, D), mask (B, L)) -> (B, L)`` (0 at padding);
    ``forward_packed(target (B, D), hist (nnz, D), rows (nnz,)) -> (nnz,)``.
    """

    def forward_packed(self, target: torch.Tensor, hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return packed_similarity(target, hist, rows)

    def forward(self, target: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,bld->bl", target, hist) * mask


class SimTier(nn.Module):
    """SimTier (Eq. 2 and Algorithm 1): ``s_i = v_i . v_c``, counted in N equal tiers over [-1, 1].

    Tier ``t`` holds ``-1 + 2t/N <= s < -1 + 2(t+1)/N`` (s = 1 falls in the last tier; scores outside
    [-1, 1] are clamped). Padding positions are not counted. No parameters.

    Args:
        n_tiers: N.

    ``forward(target (B, D), hist (B, L, D), mask (B, L)) -> (B, N)`` float counts;
    ``forward_packed(target (B, D), hist (nnz, D), rows (nnz,)) -> (B, N)``.
    """

    def __init__(self, n_tiers: int = 20) -> None:
        super().__init__()
        if n_tiers < 1:
            raise ValueError(f"n_tiers must be >= 1, got {n_tiers}")
        self.n_tiers = n_tiers

    def tiers(self, s: torch.Tensor) -> torch.Tensor:
        """Similarity -> tier index in [0, N)."""
        t = torch.floor((s.clamp(-1.0, 1.0) + 1.0) * (self.n_tiers / 2.0)).long()
        return t.clamp_(0, self.n_tiers - 1)

    def counts_from_scores(self, s: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
        """Packed scores (nnz,) of rows (nnz,) -> (batch, N) counts."""
        flat = rows * self.n_tiers + self.tiers(s)
        counts = segment_sum(torch.ones_like(s), flat, batch * self.n_tiers)
        return counts.view(batch, self.n_tiers)

    def forward_packed(self, target: torch.Tensor, hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.counts_from_scores(packed_similarity(target, hist, rows), rows, target.shape[0])

    def forward(self, target: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = torch.einsum("bd,bld->bl", target, hist)                    # Eq. 2, (B, L)
        onehot = torch.nn.functional.one_hot(self.tiers(s), self.n_tiers).to(s.dtype)  # (B, L, N)
        return (onehot * mask.unsqueeze(-1).to(s.dtype)).sum(1)         # Algorithm 1, (B, N)


class ItemVectors(nn.Module):
    """A frozen table of pre-trained item representations, row 0 and 1 zero (padding / unknown).

    Not saved with a model's weights: representations belong to the embedding table of the run
    (stamped with its encoder version) and are re-attached at load time.

    ``forward(index (...)) -> (..., D)`` float32.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        if table.dim() != 2:
            raise ValueError(f"item vectors must be (V, D), got {tuple(table.shape)}")
        self.register_buffer("table", table.detach().float().contiguous(), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table.index_select(0, index.reshape(-1)).view(*index.shape, self.table.shape[1])

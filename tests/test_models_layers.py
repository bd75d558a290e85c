"""Layers of mmrank.ctr: SimTier (Eq. 2, Algorithm 1), SimScore, DIN target attention, MLP, MAKE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrank.models.layers import MLP, ItemVectors, SimScore, SimTier, TargetAttention, pack
from mmrank.ctr.models import CtrConfig, CtrModel, MakeConfig, MakeModule, ModelSizes

torch.set_num_threads(1)


def slow_simtier(target: np.ndarray, hist: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """The obvious loop: for every valid history item, find its tier over [-1, 1] and count."""
    out = np.zeros((target.shape[0], n))
    edges = np.linspace(-1.0, 1.0, n + 1)
    for b in range(target.shape[0]):
        for i in range(hist.shape[1]):
            if not mask[b, i]:
                continue
            s = float(np.clip(np.dot(target[b], hist[b, i]), -1.0, 1.0))
            t = n - 1 if s >= 1.0 else int(np.searchsorted(edges, s, side="right") - 1)
            out[b, t] += 1
    return out


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 6), length=st.integers(1, 9), d=st.integers(1, 8), n=st.integers(1, 25),
       seed=st.integers(0, 10_000))
def test_simtier_matches_slow_reference_dense_and_packed(b, length, d, n, seed):
    g = torch.Generator().manual_seed(seed)
    target = unit(torch.randn(b, d, generator=g, dtype=torch.float64))
    hist = unit(torch.randn(b, length, d, generator=g, dtype=torch.float64))
    mask = torch.rand(b, length, generator=g) < 0.7
    layer = SimTier(n)
    ref = slow_simtier(target.numpy(), hist.numpy(), mask.numpy(), n)
    dense = layer(target, hist, mask)
    idx, rows = pack(mask)
    packed = layer.forward_packed(target, hist.reshape(-1, d)[idx], rows)
    assert dense.shape == (b, n)
    np.testing.assert_allclose(dense.numpy(), ref)
    np.testing.assert_allclose(packed.numpy(), ref)
    np.testing.assert_allclose(dense.sum(1).numpy(), mask.sum(1).numpy())


def test_simtier_tier_boundaries_and_padding():
    layer = SimTier(4)  # tiers [-1,-.5) [-.5,0) [0,.5) [.5,1]
    s = torch.tensor([-1.0, -0.5, -1e-6, 0.0, 0.49, 0.5, 1.0, 1.5, -3.0])
    assert layer.tiers(s).tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 0]
    target = torch.tensor([[1.0, 0.0]])
    hist = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [123.0, 5.0]]])
    mask = torch.tensor([[True, True, True, False]])
    assert layer(target, hist, mask).tolist() == [[1.0, 0.0, 1.0, 1.0]]
    # changing what sits in a padded slot changes nothing
    hist2 = hist.clone()
    hist2[0, 3] = torch.tensor([-7.0, 1.0])
    assert torch.equal(layer(target, hist, mask), layer(target, hist2, mask))


def test_simscore_is_dot_product_zero_at_padding():
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    hist = torch.tensor([[[0.5, 0.5], [1.0, 0.0]], [[0.0, -1.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    assert SimScore()(target, hist, mask).tolist() == [[0.5, 1.0], [-1.0, 0.0]]


def test_target_attention_equals_din_linear_on_concatenation():
    """The decomposed first layer is exactly Linear(4D) over [q, k, q-k, q*k] (DIN's unit)."""
    torch.manual_seed(0)
    d, h = 5, 7
    att = TargetAttention(d, (h, 3), act="relu").double()
    q, k = torch.randn(3, d, dtype=torch.float64), torch.randn(3, 4, d, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    # an equivalent concatenation layer: [A B C E] with A + C = Wq, B - C = Wk, E = Wp
    c = torch.randn(h, d, dtype=torch.float64)
    wk, wp = att.kp_proj.weight[:, :d], att.kp_proj.weight[:, d:]
    w = torch.cat([att.q_proj.weight - c, wk + c, c, wp], dim=1)
    qe = q.unsqueeze(1).expand_as(k)
    x = torch.cat([qe, k, qe - k, qe * k], dim=-1)
    hidden = torch.relu(x @ w.T + att.q_proj.bias)
    scores = att.score(hidden).squeeze(-1) * mask
    expected = (scores.unsqueeze(-1) * k).sum(1)
    got = att(q, k, mask)
    np.testing.assert_allclose(got.detach().numpy(), expected.detach().numpy(), atol=1e-10)
    assert torch.all(got[2] == 0)  # empty history -> zero interest


@pytest.mark.parametrize("pool", ["sum", "mean"])
@pytest.mark.parametrize("full", [True, False])
def test_dense_paths_give_the_packed_values_and_gradients(pool, full):
    """Every sample with L positions (``full``): the packed keys are one (B, L, D) block and the first
    layer one (L, D) @ (D, h1) product per sample. Ragged histories padded to (B, L_max, D) with a
    mask (the bf16 path's layout when most positions are valid). Same pooled values, scores and
    gradients as the packed path to 1e-5; a ragged or reordered batch is not taken for a full one,
    nor a sparse one padded."""
    from mmrank.models.layers import padded_layout, uniform_length

    torch.manual_seed(0)
    b, length, d = 6, 9, 8
    att = TargetAttention(d, (12, 5), pool=pool)
    rows = torch.arange(b).repeat_interleave(length)
    assert uniform_length(rows, b) == length
    assert uniform_length(rows[:-1], b) == 0                          # one sample a position short
    assert uniform_length(rows.view(b, length).t().reshape(-1), b) == 0  # same counts, other order
    assert uniform_length(torch.arange(b).repeat(length), b) == 0
    if not full:                                                      # lengths 9, 1, 5, 9, 0, 3
        rows = torch.arange(b).repeat_interleave(torch.tensor([9, 1, 5, 9, 0, 3]))
        att.pad_fill = {False: 0.0, True: 0.0}                        # pad at any fill, in fp32 too
        flat, width = padded_layout(rows, b, 0.0)
        assert width == 9 and flat[:11].tolist() == [*range(10), 18]
        assert padded_layout(rows, b, 0.6) is None                    # 27 of 54 positions valid
        assert padded_layout(rows.flip(0), b, 0.0) is None            # not in pack order
    outs = []
    for fn in (att.forward_packed, lambda q, k, r: TargetAttention._packed_body(att, q, k, r)):
        att.zero_grad(set_to_none=True)
        q = torch.randn(b, d, generator=torch.Generator().manual_seed(1), requires_grad=True)
        k = torch.randn(rows.numel(), d, generator=torch.Generator().manual_seed(2), requires_grad=True)
        pooled, scores = fn(q, k, rows)
        (pooled.square().sum() + scores.sin().sum()).backward()
        outs.append([pooled, scores, q.grad, k.grad, *(p.grad for p in att.parameters())])
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 5), length=st.integers(1, 7), seed=st.integers(0, 1000))
def test_target_attention_ignores_padding(b, length, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    att = TargetAttention(4, (6, 3))
    q, k = torch.randn(b, 4, generator=g), torch.randn(b, length, 4, generator=g)
    mask = torch.rand(b, length, generator=g) < 0.6
    k2 = torch.where(mask.unsqueeze(-1), k, torch.randn(b, length, 4, generator=g) * 100)
    torch.testing.assert_close(att(q, k, mask), att(q, k2, mask))
    mean = TargetAttention(4, (6, 3), pool="mean")
    mean.load_state_dict(att.state_dict())
    n = mask.sum(1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(mean(q, k, mask), att(q, k, mask) / n)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("with_padding", [False, True])
def test_lookup_gives_nn_embedding_values_and_gradients(sparse, with_padding):
    """:func:`lookup`'s own backward: the same gradient as ``nn.Embedding``'s (dense or sparse), the
    padding row's 0, repeated ids summed; no gradient work when none is wanted."""
    from mmrank.models.layers import lookup

    torch.manual_seed(0)
    emb = torch.nn.Embedding(30, 4, padding_idx=0, sparse=sparse)
    ids = torch.randint(1 - with_padding, 30, (5, 7))
    ids[0, :3] = 4                                                     # repeats
    grads = []
    for fn in (emb, lambda i: lookup(emb, i)):
        emb.zero_grad(set_to_none=True)
        out = fn(ids)
        (out * torch.arange(4.0)).sin().sum().backward()
        grads.append((out.detach(), emb.weight.grad.to_dense()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-6, atol=1e-7)
    assert emb.weight.grad.is_sparse == sparse and torch.all(grads[1][1][0] == 0)
    with torch.no_grad():
        assert lookup(emb, ids).grad_fn is None
    by_freq = torch.nn.Embedding(30, 4, padding_idx=0, scale_grad_by_freq=True)  # dense only (torch)
    lookup(by_freq, ids).sum().backward()                             # nn.Embedding's own scaling
    want = torch.autograd.grad(by_freq(ids).sum(), by_freq.weight)[0]
    torch.testing.assert_close(by_freq.weight.grad.to_dense(), want.to_dense())


def test_mlp_hidden_outputs():
    mlp = MLP(6, [5, 4, 3], out_dim=1)
    y, hidden = mlp.forward_hidden(torch.randn(2, 6))
    assert y.shape == (2, 1) and [h.shape[1] for h in hidden] == [5, 4, 3]
    assert MLP(6, [5], out_dim=None)(torch.randn(2, 6)).shape == (2, 5)
    with pytest.raises(ValueError, match="activation"):
        MLP(3, [2], act="swishy")


def _batch() -> dict[str, torch.Tensor]:
    return {"item": torch.tensor([2, 3, 1]), "user": torch.tensor([2, 3, 1]),
            "category": torch.tensor([1, 2, 3]), "region": torch.tensor([1, 2, 1]),
            "position": torch.tensor([1, 2, 3]),
            "hist_item": torch.tensor([[2, 4, 0], [5, 0, 0], [0, 0, 0]]),
            "hist_category": torch.tensor([[1, 2, 0], [3, 0, 0], [0, 0, 0]]),
            "mask": torch.tensor([[True, True, False], [True, False, False], [False, False, False]]),
            "item_v": torch.tensor([2, 3, 6]), "hist_item_v": torch.tensor([[2, 4, 0], [5, 0, 0], [0, 0, 0]]),
            "label": torch.tensor([1.0, 0.0, 1.0])}


@pytest.mark.parametrize("strategy", ["id", "vector", "simscore", "simtier", "make", "simtier+make"])
def test_every_strategy_forward_and_backward(strategy):
    torch.manual_seed(0)
    sizes = ModelSizes(n_items=8, n_users=5, n_categories=5, n_regions=3, vec_dim=6)
    vecs = unit(torch.randn(8, 6))
    model = CtrModel(CtrConfig(strategy=strategy, n_tiers=5, make=MakeConfig(proj_dim=4)), sizes, vecs)
    out = model(_batch())
    assert out["logit"].shape == (3,)
    assert torch.isfinite(out["logit"]).all()
    out["logit"].sum().backward()
    assert model.ids.item_emb.weight.grad is not None
    if strategy in ("make", "simtier+make"):
        assert "make" in out["aux_logits"]  # E = 0: joint, with MAKE's own loss (Eq. 5)


def _serving_batch(requests: int, n_cand: int = 40, history_len: int = 12, seed: int = 0,
                   full: bool = False) -> dict:
    """``requests`` requests, each ``n_cand`` candidates sharing one history (as a server builds them);
    ``full``: every history has ``history_len`` items."""
    g = torch.Generator().manual_seed(seed)
    rows = requests * n_cand
    hist = torch.randint(1, 60, (requests, history_len), generator=g).repeat_interleave(n_cand, dim=0)
    lens = torch.randint(1, history_len + 1, (requests,), generator=g).repeat_interleave(n_cand)
    if full:
        lens = torch.full_like(lens, history_len)
    mask = torch.arange(history_len)[None, :] < lens[:, None]
    hist = torch.where(mask, hist, 0)
    items = torch.randint(1, 60, (rows,), generator=g)
    return {"item": items, "user": torch.randint(1, 9, (rows,), generator=g),
            "category": items % 7 + 1, "region": torch.ones(rows, dtype=torch.long),
            "position": torch.zeros(rows, dtype=torch.long), "hist_item": hist, "hist_category": hist % 7 + 1,
            "mask": mask, "item_v": items, "hist_item_v": hist, "label": torch.zeros(rows)}


@pytest.mark.parametrize("strategy", ["id", "vector", "simscore", "simtier", "make", "simtier+make"])
@pytest.mark.parametrize("requests", [1, 3])
def test_shared_history_rows_give_the_dense_result(strategy, requests):
    """The serving fast paths (work per distinct history item; one dense attention block per request)
    equal the plain packed path to 1e-5."""
    from mmrank.models.layers import SharedRows

    torch.manual_seed(0)
    sizes = ModelSizes(n_items=60, n_users=9, n_categories=8, n_regions=3, vec_dim=16)
    model = CtrModel(CtrConfig(strategy=strategy, n_tiers=5, make=MakeConfig(proj_dim=8)), sizes,
                     unit(torch.randn(60, 16))).eval()
    batch = _serving_batch(requests)
    with torch.no_grad():
        plain = model(batch)["logit"]
        model.share_history = True
        shared = model(batch)["logit"]
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    ids = torch.tensor([3, 3, 5, 3, 5, 5])
    assert isinstance(SharedRows.of(ids, lambda i: i.float()[:, None]), SharedRows)
    assert not isinstance(SharedRows.of(torch.arange(6), lambda i: i.float()[:, None]), SharedRows)


def test_frozen_make_gets_no_gradient_and_id_strategy_needs_no_vectors():
    torch.manual_seed(0)
    sizes = ModelSizes(n_items=8, n_users=5, n_categories=5, n_regions=3, vec_dim=6)
    vecs = ItemVectors(unit(torch.randn(8, 6)))
    make = MakeModule(vecs, MakeConfig(proj_dim=4, knowledge="full"))
    before = {k: v.clone() for k, v in make.state_dict().items()}
    model = CtrModel(CtrConfig(strategy="make"), sizes, vecs, make=make, freeze_make=True)
    out = model(_batch())
    assert out["aux_logits"] == {}
    out["logit"].sum().backward()
    assert all(p.grad is None for p in make.parameters())
    assert all(torch.equal(before[k], v) for k, v in make.state_dict().items())
    compact = MakeModule(vecs, MakeConfig(proj_dim=4, knowledge="compact"))
    assert compact.knowledge_dim == 32 + 1 and make.knowledge_dim == 2 * 4 + 128 + 64 + 32 + 1
    b = _batch()
    assert compact.forward_batch(b)["knowledge"].shape == (3, 33)
    with pytest.raises(ValueError, match="four layers"):
        MakeModule(vecs, MakeConfig(mlp_hidden=[8, 4]))
    with pytest.raises(ValueError, match="needs item representations"):
        CtrModel(CtrConfig(strategy="simtier"), sizes)
    b = _batch()
    del b["item_v"], b["hist_item_v"]
    assert CtrModel(CtrConfig(strategy="id"), sizes)(b)["logit"].shape == (3,)


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="torch.compile needs a C++ compiler")
def test_compiled_attention_equals_the_eager_one_values_and_gradients():
    """``compile_attention``: the same logits and gradients to 1e-5, over batches of other sizes and
    history lengths (one dynamic graph each for the packed and the full-history path), for the ID
    model and SimTier+MAKE (MAKE's attention too)."""
    from mmrank.models.layers import _compiled

    assert _compiled(TargetAttention._packed_body) is not None      # the compiled path, not a fallback
    torch.manual_seed(0)
    sizes = ModelSizes(n_items=60, n_users=9, n_categories=8, n_regions=3, vec_dim=6)
    vecs = unit(torch.randn(60, 6))
    for strategy in ("id", "simtier+make"):
        cfg = dict(strategy=strategy, n_tiers=5, make=MakeConfig(proj_dim=4))
        eager = CtrModel(CtrConfig(**cfg), sizes, vecs)
        fast = CtrModel(CtrConfig(**cfg, compile_attention=True), sizes, vecs)
        fast.load_state_dict(eager.state_dict())
        assert all(m.compiled for m in fast.modules() if isinstance(m, TargetAttention))
        assert not any(m.compiled for m in eager.modules() if isinstance(m, TargetAttention))
        padding = {False: 0.0, True: 0.0}                            # the padded path, in fp32
        for requests, history_len, full, pad in ((2, 12, False, False), (3, 7, False, False), (2, 9, True, False),
                                             (3, 6, True, False), (3, 7, False, True), (2, 12, False, True)):
            batch = _serving_batch(requests, n_cand=5, history_len=history_len, seed=requests, full=full)
            for m in (*eager.modules(), *fast.modules()):
                if isinstance(m, TargetAttention):
                    m.pad_fill = padding if pad else TargetAttention.pad_fill
            outs = []
            for model in (eager, fast):
                model.zero_grad(set_to_none=True)
                out = model(batch)["logit"]
                out.square().sum().backward()
                outs.append((out.detach(), {n: p.grad.to_dense() for n, p in model.named_parameters()
                                            if p.grad is not None}))
            torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
            assert outs[1][1].keys() == outs[0][1].keys()
            for name, g in outs[0][1].items():
                torch.testing.assert_close(outs[1][1][name], g, rtol=1e-5, atol=1e-5, msg=name)


def test_bf16_attention_stays_within_its_stated_tolerance_of_fp32():
    """``attention_bf16``: logits within 0.02 of the fp32 model's (bfloat16 keeps 8 bits of
    mantissa), gradients of the same direction; the flag reaches MAKE's attention too."""
    torch.manual_seed(0)
    sizes = ModelSizes(n_items=60, n_users=9, n_categories=8, n_regions=3, vec_dim=6)
    vecs = unit(torch.randn(60, 6))
    cfg = dict(strategy="simtier+make", n_tiers=5, make=MakeConfig(proj_dim=4))
    fp32 = CtrModel(CtrConfig(**cfg), sizes, vecs)
    bf16 = CtrModel(CtrConfig(**cfg, attention_bf16=True), sizes, vecs)
    bf16.load_state_dict(fp32.state_dict())
    assert sum(m.bf16 for m in bf16.modules() if isinstance(m, TargetAttention)) == 2
    batch = _serving_batch(3, n_cand=8, history_len=12, seed=4)
    grads = []
    for model in (fp32, bf16):
        out = model(batch)["logit"]
        out.square().sum().backward()
        grads.append((out.detach(), model.interest.attention.q_proj.weight.grad.reshape(-1)))
    diff = (grads[1][0] - grads[0][0]).abs().max().item()
    assert 0 < diff < 0.02                                           # bf16 did run, and stays close
    assert torch.nn.functional.cosine_similarity(grads[0][1], grads[1][1], dim=0) > 0.99

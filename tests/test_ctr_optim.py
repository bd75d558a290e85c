"""LazyAdam (mmrank.ctr.optim) against torch.optim.SparseAdam, the reference it reproduces."""

from __future__ import annotations

import pytest
import torch

from mmrank.ctr.optim import LazyAdam


def _run(opt_cls, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(50, 6, sparse=True, padding_idx=0)
    w = torch.randn(6, dtype=torch.float64).float()
    opt = opt_cls(emb.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        ids = torch.randint(0, 12, (40,), generator=g)  # heavy repeats, padding id 0 included
        loss = (emb(ids) @ w).sin().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = opt.state[emb.weight]
    return emb.weight.detach().clone(), state["exp_avg_sq"].detach().clone()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_adam_equals_sparse_adam(seed):
    w_ref, v_ref = _run(torch.optim.SparseAdam, 25, seed)
    w, v = _run(LazyAdam, 25, seed)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-9)


def test_lazy_adam_touches_only_rows_in_the_batch_and_refuses_dense_grads():
    emb = torch.nn.Embedding(8, 3, sparse=True)
    before = emb.weight.detach().clone()
    opt = LazyAdam(emb.parameters(), lr=0.1)
    emb(torch.tensor([2, 5, 5])).sum().backward()
    opt.step()
    changed = (emb.weight.detach() != before).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [2, 5]
    dense = torch.nn.Embedding(8, 3)
    dense(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        LazyAdam(dense.parameters()).step()

"""Losses of SCL against hand computations: InfoNCE (Eq. 1), queue, masking, triplet, nested dims."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrank.pretrain.losses import (
    InfoNCELoss,
    MomentumQueue,
    TripletLoss,
    momentum_update,
    nested_normalize,
)

torch.set_num_threads(1)


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _eq1(q, k, queue, tau):
    """Eq. 1 literally, one query at a time: -log exp(q.k+/tau) / sum_i exp(q.k_i/tau)."""
    total = 0.0
    for i in range(q.shape[0]):
        keys = torch.cat([k, queue]) if queue is not None else k
        num = math.exp(float(q[i] @ k[i]) / tau)
        den = sum(math.exp(float(q[i] @ kk) / tau) for kk in keys)
        total += -math.log(num / den)
    return total / q.shape[0]


def test_infonce_matches_eq1_with_and_without_queue():
    q, k, queue = _unit(4, 8), _unit(4, 8, seed=1), _unit(6, 8, seed=2)
    loss = InfoNCELoss(init_temperature=0.1)
    assert loss(q, k)["contrastive_loss"].item() == pytest.approx(_eq1(q, k, None, 0.1), rel=1e-5)
    got = loss(q, k, queue=queue)["contrastive_loss"].item()
    assert got == pytest.approx(_eq1(q, k, queue, 0.1), rel=1e-5)
    assert loss.temperature == pytest.approx(0.1)


def test_infonce_masks_same_item_and_empty_queue_slots():
    q, k = _unit(3, 8), _unit(3, 8, seed=1)
    ids = torch.tensor([5, 5, 7])
    loss = InfoNCELoss(init_temperature=0.1)
    masked = loss(q, k, q_ids=ids, k_ids=ids)["contrastive_loss"]
    # rows 0 and 1 share item 5: each sees only itself and item 7 as keys
    expect = 0.0
    for i, keep in ((0, [0, 2]), (1, [1, 2]), (2, [0, 1, 2])):
        logits = torch.stack([q[i] @ k[j] for j in keep]) / 0.1
        expect += -F.log_softmax(logits, 0)[keep.index(i)].item()
    assert masked.item() == pytest.approx(expect / 3, rel=1e-5)
    queue = MomentumQueue(8, 5)
    queue.enqueue(k[2:3], torch.tensor([5]))  # item 5 in the queue: masked for rows 0 and 1
    with_q = loss(q, k, q_ids=ids, k_ids=ids, queue=queue.keys, queue_ids=queue.ids,
                  queue_valid=queue.valid)["contrastive_loss"]
    row2 = torch.stack([q[2] @ k[j] for j in range(3)] + [q[2] @ k[2]]) / 0.1
    exp2 = -F.log_softmax(row2, 0)[2].item()
    expect_q = (expect - (-F.log_softmax(torch.stack([q[2] @ k[j] for j in range(3)]) / 0.1, 0)[2]
                          ).item() + exp2) / 3
    assert with_q.item() == pytest.approx(expect_q, rel=1e-5)


def test_temperature_is_learned_and_gradients_finite_under_masks():
    q = _unit(4, 8).requires_grad_()
    k = _unit(4, 8, seed=1)
    ids = torch.tensor([1, 1, 2, 3])
    loss = InfoNCELoss()
    queue = MomentumQueue(8, 16)  # empty: every slot masked
    out = loss(q, k, q_ids=ids, k_ids=ids, queue=queue.keys, queue_ids=queue.ids,
               queue_valid=queue.valid)
    out["contrastive_loss"].backward()
    assert torch.isfinite(loss.logit_scale.grad) and loss.logit_scale.grad != 0
    assert torch.isfinite(q.grad).all()
    frozen = InfoNCELoss(learnable=False)
    assert not frozen.logit_scale.requires_grad


def test_nested_dims_terms_and_prefix_normalisation():
    q, k = _unit(5, 16), _unit(5, 16, seed=3)
    nested = InfoNCELoss(init_temperature=0.2, nested_dims=(4, 16))(q, k)
    assert sorted(nested) == ["contrastive_loss@16", "contrastive_loss@4"]
    full = InfoNCELoss(init_temperature=0.2)(q, k)["contrastive_loss"]
    assert (2 * nested["contrastive_loss@16"]).item() == pytest.approx(full.item(), rel=1e-5)
    p = nested_normalize(q, 4)
    assert p.shape == (5, 4)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(5))


def test_triplet_hand_worked():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    pos = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    neg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = TripletLoss(margin=0.2)
    # row 0: relu(0.2 - 0.6 + 1.0) = 0.6; row 1: relu(0.2 - 1 + 0) = 0
    assert t(q, pos, neg)["triplet_loss"].item() == pytest.approx(0.3)
    valid = torch.tensor([False, True])
    assert t(q, pos, neg, valid)["triplet_loss"].item() == pytest.approx(0.0)
    assert TripletLoss(0.2, weight=2.0)(q, pos, neg)["triplet_loss"].item() == pytest.approx(0.6)


def test_queue_fifo_and_paper_size():
    q = MomentumQueue(dim=2, size=3)
    q.enqueue(torch.ones(2, 2), torch.tensor([1, 2]))
    q.enqueue(2 * torch.ones(2, 2), torch.tensor([3, 4]))
    assert q.ids.tolist() == [4, 2, 3] and int(q.ptr) == 1 and bool(q.valid.all())
    q.enqueue(torch.zeros(5, 2), torch.arange(10, 15))  # more than K: keeps the newest K
    assert sorted(q.ids.tolist()) == [12, 13, 14]
    big = MomentumQueue(dim=8, size=196_800)
    big.enqueue(_unit(256, 8), torch.arange(256))
    assert int(big.valid.sum()) == 256 and big.keys.shape == (196_800, 8)


def test_momentum_update():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = b.weight.detach().clone()
    momentum_update(a, b, 1.0)
    torch.testing.assert_close(b.weight, before)
    momentum_update(a, b, 0.5)
    torch.testing.assert_close(b.weight, 0.5 * before + 0.5 * a.weight.detach())
    momentum_update(a, b, 0.0)
    torch.testing.assert_close(b.weight, a.weight.detach())


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 6), d=st.integers(2, 12), k=st.integers(0, 8), seed=st.integers(0, 99))
def test_infonce_finite_nonnegative_any_shape(b, d, k, seed):
    q, keys = _unit(b, d, seed=seed), _unit(b, d, seed=seed + 1)
    queue = _unit(k, d, seed=seed + 2) if k else None
    v = InfoNCELoss()(q, keys, queue=queue)["contrastive_loss"]
    assert torch.isfinite(v) and v.item() >= -1e-6

"""Losses of SCL against hand computations: InfoNCE (Eq. 1), queue, masking, triplet, nested dims."""

from __future__ import annotations

import math

import pytest
import numpy as np
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


# --- the fast queue path (cached prefixes, sorted ids, chunked log-sum-exp) against a dense reference


def _dense_reference(loss, q, k, pos_index, queue, q_ids, k_ids, queue_ids, queue_valid, log_q=None):
    """Eq. 1 the plain way: explicit prefix normalisation, dense (B, M + K) masks, one concatenation,
    F.cross_entropy (scale before mask); with ``log_q``, every key's logit minus its id's log_q."""
    scale = loss.logit_scale.clamp(max=loss.max_log_scale).exp()
    b = q.shape[0]
    mask_k = q_ids[:, None] == k_ids[None, :]
    mask_k[torch.arange(b), pos_index] = False
    mask_q = ~queue_valid[None, :].expand(b, -1) | (q_ids[:, None] == queue_ids[None, :])
    mask = torch.cat([mask_k, mask_q], dim=1)
    out = {}
    for d in loss.nested_dims or (None,):
        if d is None:
            qd, kd, ud = q, k, queue
        else:
            qd, kd, ud = (F.normalize(t[:, :d], dim=-1) for t in (q, k, queue))
        logits = torch.cat([qd @ kd.t(), qd @ ud.t()], dim=1) * scale
        if log_q is not None:
            logits = logits - log_q[torch.cat([k_ids, queue_ids.clamp(min=0)])][None, :]
        logits = logits.masked_fill(mask, float("-inf"))
        name = loss.name if d is None else f"{loss.name}@{d}"
        out[name] = F.cross_entropy(logits, pos_index) / (len(loss.nested_dims) or 1)
    return out


def _grads(fn, loss, q, k, queue=None):
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    loss.logit_scale.grad = None
    terms = fn(q, k)
    sum(terms.values()).backward()
    values = {n: v.item() for n, v in terms.items()}
    return values, q.grad, k.grad, loss.logit_scale.grad.clone()


def _assert_same(got, want):
    assert sorted(got[0]) == sorted(want[0])
    for n in want[0]:
        assert got[0][n] == pytest.approx(want[0][n], rel=1e-5, abs=1e-5), n
    for a, b in zip(got[1:], want[1:]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _check_plain_queue(loss, q, k, queue, ids, queue_ids, valid):
    """The loss with a plain tensor queue (``ids``: each query's and in-batch key's item) against
    the dense reference: values and gradients."""
    want = _grads(lambda qq, kk: _dense_reference(loss, qq, kk, torch.arange(q.shape[0]), queue, ids,
                                                   ids, queue_ids, valid), loss, q, k)
    got = _grads(lambda qq, kk: loss(qq, kk, queue=queue, q_ids=ids, k_ids=ids, queue_ids=queue_ids,
                                     queue_valid=valid), loss, q, k)
    _assert_same(got, want)


@pytest.mark.parametrize("nested", [(4, 8, 16), ()])
@pytest.mark.parametrize("filled", [37, 50, 130])  # partly filled, full, wrapped around
def test_queue_fast_path_matches_dense_reference(nested, filled):
    b, m, dim, size = 12, 16, 16, 50
    g = torch.Generator().manual_seed(filled + len(nested))
    q = _unit(b, dim, seed=filled)
    k = _unit(m, dim, seed=filled + 1)
    ids_pool = torch.randint(0, 9, (b,), generator=g)                # repeated ids
    q_ids = ids_pool
    k_ids = torch.cat([ids_pool, torch.randint(0, 9, (m - b,), generator=g)])
    pos_index = torch.randperm(m, generator=g)[:b]
    k_ids[pos_index] = q_ids                                         # the positive has the query's id
    queue = MomentumQueue(dim, size)
    for start in range(0, filled, 13):                               # several enqueues (incremental cache)
        n = min(13, filled - start)
        queue.enqueue(_unit(n, dim, seed=100 + start), torch.randint(0, 9, (n,), generator=g))
        queue.view(nested or (None,))
    loss = InfoNCELoss(init_temperature=0.05, nested_dims=nested)
    loss.chunk = 7                                                   # many chunks, a ragged tail
    args = dict(q_ids=q_ids, k_ids=k_ids)
    want = _grads(lambda qq, kk: _dense_reference(loss, qq, kk, pos_index, queue.keys, q_ids, k_ids,
                                                   queue.ids, queue.valid), loss, q, k)
    fast = _grads(lambda qq, kk: loss(qq, kk, pos_index, queue=queue, **args), loss, q, k)
    _assert_same(fast, want)
    again = _grads(lambda qq, kk: loss(qq, kk, pos_index, queue=queue, **args), loss, q, k)
    _assert_same(again, want)                                        # cached prefixes
    plain = _grads(lambda qq, kk: loss(qq, kk, pos_index, queue=queue.keys, queue_ids=queue.ids,
                                        queue_valid=queue.valid, **args), loss, q, k)
    _assert_same(plain, want)                                        # a plain tensor queue
    loss.chunk = 4096                                                # one chunk
    _assert_same(_grads(lambda qq, kk: loss(qq, kk, pos_index, queue=queue, **args), loss, q, k), want)


def test_queue_fast_path_wholly_masked_rows_and_scattered_slots():
    """A query whose every queue key has its id (chunk by chunk and overall), and valid slots that
    are not a prefix (a plain tensor queue): same values and finite equal gradients."""
    b, dim = 4, 8
    q, k = _unit(b, dim, seed=5), _unit(b, dim, seed=6)
    ids = torch.tensor([3, 3, 4, 5])
    queue = _unit(9, dim, seed=7)
    queue_ids = torch.tensor([3, 3, 3, 3, 4, 3, 3, 3, 9])
    valid = torch.tensor([True, True, True, True, False, True, True, False, True])
    loss = InfoNCELoss(init_temperature=0.1, nested_dims=(4, 8))
    loss.chunk = 2
    _check_plain_queue(loss, q, k, queue, ids, queue_ids, valid)
    only3 = torch.full((9,), 3)                                      # rows 0, 1: all queue keys masked
    _check_plain_queue(loss, q, k, queue, ids, only3, torch.ones(9, dtype=torch.bool))


def test_queue_tensor_with_grad_gets_the_reference_gradient():
    q, k = _unit(5, 8, seed=1), _unit(5, 8, seed=2)
    ids = torch.tensor([1, 2, 2, 3, 4])
    queue_ids = torch.tensor([2, 7, 1, 1, 9, 8])
    grads = []
    for fast in (True, False):
        u = _unit(6, 8, seed=3).requires_grad_()
        loss = InfoNCELoss(nested_dims=(4, 8))
        loss.chunk = 4
        valid = torch.ones(6, dtype=torch.bool)
        terms = (loss(q, k, queue=u, q_ids=ids, k_ids=ids, queue_ids=queue_ids, queue_valid=valid)
                 if fast else _dense_reference(loss, q, k, torch.arange(5), u, ids, ids, queue_ids,
                                               valid))
        sum(terms.values()).backward()
        grads.append(u.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def _count_running_max(monkeypatch):
    """Count the calls of the queue term's running-max pass (its fallback)."""
    import mmrank.pretrain.losses as losses

    calls = []
    real = losses._running_max_pass
    monkeypatch.setattr(losses, "_running_max_pass", lambda *a: calls.append(1) or real(*a))
    return calls


def test_queue_fixed_shift_equals_running_max_and_is_the_path_taken(monkeypatch):
    """Unit keys: the one-pass fixed shift is taken (no fallback) and gives the running max's
    values and gradients, also at the largest scale (100) with a logQ bias."""
    import mmrank.pretrain.losses as losses

    calls = _count_running_max(monkeypatch)
    b, dim = 6, 16
    queue = MomentumQueue(dim, 300)
    queue.enqueue(_unit(300, dim, seed=11), torch.arange(300) % 17)
    ids = torch.arange(b)
    log_q = torch.log_softmax(torch.randn(17, generator=torch.Generator().manual_seed(2)) * 2, 0)
    for tau in (0.07, 0.01):
        loss = InfoNCELoss(init_temperature=tau, nested_dims=(8, 16))
        loss.chunk = 64
        want = _grads(lambda qq, kk: _dense_reference(loss, qq, kk, torch.arange(b), queue.keys, ids, ids,
                                                       queue.ids, queue.valid, log_q), loss,
                      _unit(b, dim, seed=12), _unit(b, dim, seed=13))
        got = _grads(lambda qq, kk: loss(qq, kk, queue=queue, q_ids=ids, k_ids=ids, log_q=log_q), loss,
                     _unit(b, dim, seed=12), _unit(b, dim, seed=13))
        _assert_same(got, want)
    assert calls == []                                               # the fast path, every time
    x = _unit(b, dim, seed=14) * 30
    blocks = losses._blocks(300, 64, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    buf = x.new_empty(b * 64)
    z, o = losses._exp_pass(x, queue.keys, None, blocks, buf, torch.zeros(b), True)
    top, z_max, o_max = losses._running_max_pass(x, queue.keys, None, blocks, buf, True)
    torch.testing.assert_close(z.log(), top + z_max.log(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(o / z[:, None], o_max / z_max[:, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["overflow", "underflow"])
def test_queue_fixed_shift_falls_back_when_a_row_leaves_range(monkeypatch, case):
    """Keys far from unit length overflow the fixed shift's exps; at scale 100 a query with every
    key pointing away underflows them. Both are detected and redone with the running max:
    values and gradients equal the dense reference."""
    calls = _count_running_max(monkeypatch)
    b, dim = 4, 8
    q, k = _unit(b, dim, seed=21), _unit(b, dim, seed=22)
    if case == "overflow":
        queue, tau = _unit(40, dim, seed=23) * 30.0, 0.05                # logits up to 600
    else:                                                            # cosines near -1: logits near -100
        e = _unit(1, dim, seed=24)
        q = F.normalize(e + 0.05 * _unit(b, dim, seed=25), dim=-1)
        queue, tau = F.normalize(-e + 0.05 * _unit(40, dim, seed=26), dim=-1), 0.01
    ids, queue_ids = torch.arange(b), torch.arange(40) + 100
    valid = torch.ones(40, dtype=torch.bool)
    loss = InfoNCELoss(init_temperature=tau, max_scale=100.0)
    loss.chunk = 16
    _check_plain_queue(loss, q, k, queue, ids, queue_ids, valid)
    assert len(calls) == 1


def test_queue_cache_follows_enqueue_load_and_inplace_edits():
    queue = MomentumQueue(dim=6, size=10)
    queue.enqueue(_unit(4, 6, seed=1), torch.tensor([4, 1, 3, 1]))
    v = queue.view((2, None))
    assert v.keys[2].shape == (4, 2) and v.keys[None].shape == (4, 6)
    assert v.sorted_ids.tolist() == [1, 1, 3, 4] and queue.ids[v.order].tolist() == [1, 1, 3, 4]
    for _ in range(3):                                               # wraps around: only new rows redone
        queue.enqueue(_unit(4, 6, seed=2), torch.tensor([9, 8, 7, 6]))
    v = queue.view((2, 4))
    for d in (2, 4):
        torch.testing.assert_close(v.keys[d], F.normalize(queue.keys[:, :d], dim=-1))
    assert v.sorted_ids.tolist() == sorted(queue.ids.tolist())
    other = MomentumQueue(dim=6, size=10)
    other.enqueue(_unit(10, 6, seed=3), torch.arange(10))
    queue.load_state_dict(other.state_dict())                        # e.g. a resumed checkpoint
    torch.testing.assert_close(queue.view((2,)).keys[2], F.normalize(other.keys[:, :2], dim=-1))
    assert queue.view((2,)).sorted_ids.tolist() == list(range(10))
    queue.keys.mul_(-1)                                              # an in-place edit
    torch.testing.assert_close(queue.view((2,)).keys[2], F.normalize(-other.keys[:, :2], dim=-1))
    assert "_prefixes" not in "".join(queue.state_dict())           # caches are not state
    with pytest.raises(ValueError, match="MomentumQueue"):
        InfoNCELoss()(_unit(2, 6), _unit(2, 6), queue=queue, queue_valid=queue.valid)


def test_two_forwards_before_backward_and_a_retained_graph_give_each_its_own_gradient():
    """Nothing is shared between graphs: two pending graphs each get their own gradient, and a
    retained graph's second backward, after another forward, gives the same gradient again."""
    queue = MomentumQueue(dim=8, size=64)
    queue.enqueue(_unit(64, 8, seed=4), torch.arange(64))
    loss = InfoNCELoss(nested_dims=(8,))
    loss.chunk = 16
    q1, q2, k = _unit(4, 8, seed=1), _unit(4, 8, seed=2), _unit(4, 8, seed=3)
    ref = []
    for qq in (q1, q2):
        x = qq.clone().requires_grad_()
        sum(loss(x, k, queue=queue).values()).backward()
        ref.append(x.grad)
    assert not torch.allclose(ref[0], ref[1])
    x1, x2 = q1.clone().requires_grad_(), q2.clone().requires_grad_()
    l1, l2 = sum(loss(x1, k, queue=queue).values()), sum(loss(x2, k, queue=queue).values())
    (l1 + l2).backward()
    torch.testing.assert_close(x1.grad, ref[0])
    torch.testing.assert_close(x2.grad, ref[1])
    x1 = q1.clone().requires_grad_()
    l1 = sum(loss(x1, k, queue=queue).values())
    l1.backward(retain_graph=True)
    sum(loss(q2.clone().requires_grad_(), k, queue=queue).values())
    l1.backward()
    torch.testing.assert_close(x1.grad, 2 * ref[0])


def test_enqueue_between_forward_and_backward_gives_the_gradient_of_the_keys_used():
    """MoCo enqueues after the backward, but a trainer that enqueued earlier would still get the
    gradient of the forward it ran: the backward reads no queue key (the queue is detached)."""
    import copy

    queue = MomentumQueue(dim=8, size=32)
    queue.enqueue(_unit(32, 8, seed=1), torch.arange(32))
    loss = InfoNCELoss(nested_dims=(4, 8))
    q0, k = _unit(4, 8, seed=2), _unit(4, 8, seed=3)
    want = q0.clone().requires_grad_()
    sum(loss(want, k, queue=queue).values()).backward()
    q = q0.clone().requires_grad_()
    total = sum(loss(q, k, queue=queue).values())
    queue.enqueue(_unit(4, 8, seed=4), torch.arange(4))              # overwrites cached keys in use
    total.backward()
    torch.testing.assert_close(q.grad, want.grad)
    twin = copy.deepcopy(loss)
    assert twin(q, k, queue=queue)["contrastive_loss@8"].item() == pytest.approx(
        loss(q, k, queue=queue)["contrastive_loss@8"].item())


@pytest.mark.parametrize("nested", [(4, 16), ()])
def test_logq_correction_matches_dense_reference_and_favours_popular_items(nested):
    b, m, dim, size = 10, 14, 16, 40
    g = torch.Generator().manual_seed(3)
    q, k = _unit(b, dim, seed=5), _unit(m, dim, seed=6)
    k_ids = torch.randint(0, 9, (m,), generator=g)
    pos_index = torch.arange(b)
    q_ids = k_ids[:b]
    queue = MomentumQueue(dim, size)
    queue.enqueue(_unit(29, dim, seed=7), torch.randint(0, 9, (29,), generator=g))  # partly filled
    log_q = torch.log_softmax(torch.randn(9, generator=g) * 2, 0)
    loss = InfoNCELoss(init_temperature=0.05, nested_dims=nested)
    loss.chunk = 6
    want = _grads(lambda qq, kk: _dense_reference(loss, qq, kk, pos_index, queue.keys, q_ids, k_ids,
                                                   queue.ids, queue.valid, log_q), loss, q, k)
    fast = _grads(lambda qq, kk: loss(qq, kk, pos_index, queue=queue, q_ids=q_ids, k_ids=k_ids,
                                      log_q=log_q), loss, q, k)
    _assert_same(fast, want)
    plain = _grads(lambda qq, kk: loss(qq, kk, pos_index, queue=queue.keys, queue_ids=queue.ids,
                                       queue_valid=queue.valid, q_ids=q_ids, k_ids=k_ids, log_q=log_q),
                   loss, q, k)
    _assert_same(plain, want)
    # Direction: the more popular a negative, the less it is penalised (its logit is lowered by
    # log q), so raising one negative item's log q lowers the loss and the push away from it.
    # Item 8 is only ever a negative (an extra in-batch key and a queue key).
    q4, k5 = _unit(4, dim, seed=8), _unit(5, dim, seed=9)
    ids4, ids5 = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3, 8])
    q8 = MomentumQueue(dim, 4)
    q8.enqueue(_unit(2, dim, seed=10), torch.tensor([8, 8]))
    flat = torch.full((9,), -float(np.log(9)))
    bumped = flat.clone()
    bumped[8] += 2.0
    with torch.no_grad():
        base = sum(loss(q4, k5, torch.arange(4), queue=q8, q_ids=ids4, k_ids=ids5, log_q=flat).values())
        more = sum(loss(q4, k5, torch.arange(4), queue=q8, q_ids=ids4, k_ids=ids5, log_q=bumped).values())
    assert float(more) < float(base) - 1e-3
    with pytest.raises(ValueError, match="needs q_ids"):
        loss(q, k, log_q=log_q)

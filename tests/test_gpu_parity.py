"""One SCL step and one DIN step from the SAME weights and batch on the CPU (fp32) and on CUDA (bf16
autocast, fp32 master weights): losses and gradients agree to a bf16 tolerance.

Tolerance (bf16 keeps 8 significant bits, a relative rounding of 2**-8 = 0.4% per operation):
the loss within a relative 2e-2; every parameter's gradient at cosine >= 0.99 to the fp32 one and its
norm within a relative 5e-2 (a parameter whose fp32 gradient is ~0 must stay ~0).

The ``gpu`` tests need CUDA (``benchmarks/gpu_check.py`` runs them); the CPU twins run the same harness
fp32 against ``torch.autocast("cpu", dtype=torch.bfloat16)`` here, and one shows the comparison fails
when the two steps do not start from the same weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmrank.device import autocast, to_device

LOSS_RTOL = 2e-2
GRAD_COS = 0.99
GRAD_NORM_RTOL = 5e-2
ZERO = 1e-8

Amp = Callable[[torch.device], contextlib.AbstractContextManager]


def fp32(device: torch.device) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def cuda_bf16(device: torch.device) -> contextlib.AbstractContextManager:
    return autocast(device, True)  # mmrank's own switch: bf16 autocast on CUDA


def cpu_bf16(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def compare(ref: tuple[float, dict], got: tuple[float, dict]) -> list[str]:
    """What differs beyond the stated tolerance (empty: the steps agree)."""
    (l0, g0), (l1, g1) = ref, got
    bad = []
    if not abs(l1 - l0) <= LOSS_RTOL * abs(l0):
        bad.append(f"loss {l1:.6g} vs {l0:.6g}")
    if set(g0) != set(g1):
        bad.append(f"gradients of different parameters: {sorted(set(g0) ^ set(g1))}")
    for name in sorted(set(g0) & set(g1)):
        a, b = g0[name].flatten().double(), g1[name].flatten().double()
        na, nb = float(a.norm()), float(b.norm())
        if na < ZERO:
            if nb > ZERO * 100:
                bad.append(f"{name}: fp32 gradient ~0, got norm {nb:.3g}")
            continue
        cos = float(a @ b) / max(na * nb, 1e-30)
        if cos < GRAD_COS or abs(nb - na) > GRAD_NORM_RTOL * na:
            bad.append(f"{name}: cosine {cos:.4f}, norm {nb:.4g} vs {na:.4g}")
    return bad


def grads(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as a dense fp32 host tensor (the ID embeddings' are sparse)."""
    out = {}
    for i, m in enumerate(modules):
        for n, p in m.named_parameters():
            if p.grad is not None:
                g = p.grad.detach()
                out[f"{i}.{n}"] = (g.to_dense() if g.is_sparse else g).float().cpu()
    return out


# ---- SCL: SCLModel + Objective (InfoNCE with a filled MoCo queue, item->query InfoNCE, triplet) ------

D_IMG, D_TXT, B, K = 64, 48, 32, 512


def scl_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n_items = 200
    return {"q_txt": torch.randn(B, D_TXT, generator=g), "i_img": torch.randn(B, D_IMG, generator=g),
            "i_txt": torch.randn(B, D_TXT, generator=g), "n_img": torch.randn(B, D_IMG, generator=g),
            "n_txt": torch.randn(B, D_TXT, generator=g),
            "ids": torch.randperm(n_items, generator=g)[:B],
            "queue_keys": F.normalize(torch.randn(K, 64, generator=g), dim=-1),
            "queue_ids": torch.randint(0, n_items, (K,), generator=g),
            "valid": torch.rand(B, generator=g) < 0.8}


def scl_step(device: torch.device, amp: Amp, weights_seed: int = 0) -> tuple[float, dict]:
    from mmrank.pretrain.config import PretrainConfig
    from mmrank.pretrain.losses import MomentumQueue
    from mmrank.pretrain.model import SCLModel
    from mmrank.pretrain.train import Objective

    cfg = PretrainConfig(dim=64, hidden=96, nested_dims=[32, 64], queue_size=K)
    torch.manual_seed(weights_seed)
    model = SCLModel(D_IMG, D_TXT, cfg.dim, cfg.hidden).to(device)
    objective = Objective(cfg).to(device)
    assert objective.triplet is not None, "the scl variant has a triplet term"
    x = {k: v.to(device) for k, v in scl_inputs().items()}
    queue = MomentumQueue(cfg.dim, cfg.queue_size).to(device)
    queue.enqueue(x["queue_keys"], x["queue_ids"])
    model.train()
    pos = torch.arange(B, device=device)
    with amp(device):
        q = model.text_query(x["q_txt"])
        k = model.item(x["i_img"], x["i_txt"])
        kn = model.item(x["n_img"], x["n_txt"])
        terms = objective.q2i(q, k, pos, queue=queue, q_ids=x["ids"], k_ids=x["ids"])
        if objective.i2q is not None:
            terms.update(objective.i2q(k, q, pos, q_ids=x["ids"], k_ids=x["ids"]))
        terms.update(objective.triplet(q, k, kn, x["valid"]))
        loss = sum(terms.values())
    loss = loss.float()
    loss.backward()
    return float(loss.detach()), grads(model, objective)


# ---- DIN: mmrank's CtrModel as benchmarks/ctr_throughput.py builds it, full histories -------------------

def din_batch(tmp_path) -> tuple[dict[str, torch.Tensor], object]:
    from mmrank.ctr.data import FeatureSpace, load_samples, make_batch
    from mmrank.data.io import write_table
    from mmrank.data.schemas import HISTORY_LEN
    from mmrank.testing.ctr import synthetic_samples

    table, _ = synthetic_samples(256, n_items=300, n_users=100, min_len=HISTORY_LEN, seed=3)
    data = load_samples(write_table(table, tmp_path / "samples.parquet"))
    space = FeatureSpace.fit(data, np.unique(table.column("item_id").to_numpy()))
    return make_batch(space.encode(data), np.arange(128)), space


def din_step(device: torch.device, amp: Amp, batch: dict, space, weights_seed: int = 0) -> tuple[float, dict]:
    from mmrank.ctr.models import CtrConfig, CtrModel, ModelSizes

    cfg = CtrConfig(emb_dim=16, att_hidden=[80, 40], mlp_hidden=[200, 80], act="prelu", use_position=False)
    torch.manual_seed(weights_seed)
    model = CtrModel(cfg, ModelSizes(len(space.items), len(space.users), space.n_categories,
                                     space.n_regions, vec_dim=0)).to(device)
    model.train()
    b = {k: to_device(v, device) for k, v in batch.items()}
    with amp(device):
        logit = model(b)["logit"]
        loss = F.binary_cross_entropy_with_logits(logit.float(), b["label"])
    loss.backward()
    return float(loss.detach()), grads(model)


# ---- the CPU twins (run here) -------------------------------------------------------------------------

CPU = torch.device("cpu")


def test_scl_step_cpu_fp32_vs_cpu_bf16_autocast() -> None:
    ref, got = scl_step(CPU, fp32), scl_step(CPU, cpu_bf16)
    assert len(ref[1]) > 5 and all(g.abs().sum() > 0 for g in list(ref[1].values())[:3])
    assert compare(ref, got) == []


def test_din_step_cpu_fp32_vs_cpu_bf16_autocast(tmp_path) -> None:
    batch, space = din_batch(tmp_path)
    ref, got = din_step(CPU, fp32, batch, space), din_step(CPU, cpu_bf16, batch, space)
    assert len(ref[1]) > 5
    assert compare(ref, got) == []


def test_the_comparison_fails_on_other_weights(tmp_path) -> None:
    """The harness can fail: the same batch from other initial weights is far outside the tolerance."""
    assert compare(scl_step(CPU, fp32), scl_step(CPU, fp32, weights_seed=1))
    batch, space = din_batch(tmp_path)
    assert compare(din_step(CPU, fp32, batch, space), din_step(CPU, fp32, batch, space, weights_seed=1))
    # and a step against itself agrees exactly
    a = din_step(CPU, fp32, batch, space)
    assert compare(a, a) == []


# ---- CUDA (bf16 autocast) against the CPU (fp32) ------------------------------------------------------

@pytest.mark.gpu
def test_scl_step_cuda_bf16_matches_cpu_fp32() -> None:
    ref, got = scl_step(CPU, fp32), scl_step(torch.device("cuda"), cuda_bf16)
    assert compare(ref, got) == []


@pytest.mark.gpu
def test_din_step_cuda_bf16_matches_cpu_fp32(tmp_path) -> None:
    batch, space = din_batch(tmp_path)
    ref, got = din_step(CPU, fp32, batch, space), din_step(torch.device("cuda"), cuda_bf16, batch, space)
    assert compare(ref, got) == []

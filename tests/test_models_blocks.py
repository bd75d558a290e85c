"""Model blocks and their registry; the block-composed CtrModel against the pre-refactor one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrank.models.layers import ItemVectors
from mmrank.ctr.models import PAPER_STRATEGIES as STRATEGIES, CtrConfig, MakeConfig, ModelSizes  # the pre-refactor six
from mmrank.errors import ConfigError
from mmrank.models import create, describe_blocks, list_blocks
from mmrank.models.blocks import (CAFU, ESMMHeads, MMoEHeads, MultiPerspectiveSelfAttention, MultiTaskLoss,
                                  RegionMask, SequentialHeads, TaskHeads)

torch.set_num_threads(1)
_REF = Path(__file__).parent / "reference" / "ctr_models_pre_blocks.py"


def _legacy():
    name = "ctr_models_pre_blocks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _REF)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _batch(seed: int, b: int = 16, length: int = 7, n_items: int = 30, n_cat: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, length + 1, (b,), generator=g)
    mask = torch.arange(length).unsqueeze(0) < lens.unsqueeze(1)
    hist = torch.randint(2, n_items, (b, length), generator=g) * mask
    return {"item": torch.randint(1, n_items, (b,), generator=g), "user": torch.randint(1, 9, (b,), generator=g),
            "category": torch.randint(1, n_cat, (b,), generator=g), "region": torch.randint(0, 3, (b,), generator=g),
            "position": torch.randint(0, 10, (b,), generator=g), "hist_item": hist,
            "hist_category": torch.randint(1, n_cat, (b, length), generator=g) * mask, "mask": mask,
            "item_v": torch.randint(2, n_items, (b,), generator=g), "hist_item_v": hist,
            "label": (torch.rand(b, generator=g) < 0.3).float()}


# the pre-block model's names -> today's: config fields, then state-dict key prefixes
OLD_FIELDS = {"history_len": "max_len"}
OLD_KEYS = {**{f"{m}.": f"ids.{m}." for m in ("item_emb", "cat_emb", "user_emb", "region_emb", "pos_emb")},
            "vec_proj.": "vector.proj.", "attention.": "interest.attention.", "make.": "knowledge.module.",
            "knowledge_norm.": "knowledge.norm.", "mlp.": "head.towers.click."}


def _block_names(state: dict) -> dict:
    out = {}
    for key, v in state.items():
        old = next((o for o in OLD_KEYS if key.startswith(o)), None)
        out[key if old is None else OLD_KEYS[old] + key[len(old):]] = v
    return out


SMALL = dict(emb_dim=6, att_hidden=[12, 6], mlp_hidden=[16, 8], n_tiers=7, vector_dim=5, history_len=7,
             make=MakeConfig(proj_dim=4, att_hidden=[8, 4], mlp_hidden=[12, 8, 4]).model_dump())


@pytest.mark.parametrize("strategy,frozen_make", [(s, False) for s in STRATEGIES]
                         + [(s, True) for s in STRATEGIES if "make" in s])
def test_block_ctr_model_equals_pre_refactor_model(strategy, frozen_make):
    """Same seed -> the same weights (blocks are built in the old order), the same logits and aux logits
    in train and eval mode; the old state dict loads into the new model; the loss is the old trainer's."""
    old_mod = _legacy()
    sizes = ModelSizes(n_items=30, n_users=9, n_categories=6, n_regions=3, vec_dim=8)
    torch.manual_seed(0)
    vecs = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    cfg = CtrConfig.model_validate({**SMALL, "strategy": strategy})
    # fields added since (execution options such as compile_attention) are unknown to the old model,
    # which called the history length max_len
    fields = {OLD_FIELDS.get(k, k): v for k, v in cfg.model_dump().items()}
    old_cfg = old_mod.CtrConfig.model_validate({k: v for k, v in fields.items()
                                                if k in old_mod.CtrConfig.model_fields})
    assert old_cfg.max_len == cfg.history_len

    def build(mod, c):
        torch.manual_seed(1)
        make = mod.MakeModule(ItemVectors(vecs), c.make) if frozen_make else None
        return mod.CtrModel(c, sizes, vecs, make=make, freeze_make=frozen_make)

    old, new = build(old_mod, old_cfg), build(__import__("mmrank.ctr.models", fromlist=["x"]), cfg)
    assert sum(p.numel() for p in old.parameters()) == sum(p.numel() for p in new.parameters())
    for mode in ("train", "eval"):
        getattr(old, mode)(), getattr(new, mode)()
        for seed in (0, 1):
            batch = _batch(seed)
            o, n = old(batch), new(batch)
            torch.testing.assert_close(n["logit"], o["logit"], rtol=0, atol=0)
            torch.testing.assert_close(n["logits"]["click"], o["logit"], rtol=0, atol=0)
            assert sorted(n["aux_logits"]) == sorted(o["aux_logits"])
            for k in o["aux_logits"]:
                torch.testing.assert_close(n["aux_logits"][k], o["aux_logits"][k], rtol=0, atol=0)
    # the old weights (top-level keys, renamed to the blocks') load into the new model and give the same logits
    old.train()
    for p in old.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.3)
    fresh = build(__import__("mmrank.ctr.models", fromlist=["x"]), cfg)
    fresh.load_state_dict(_block_names(old.state_dict()), strict=True)
    old.eval(), fresh.eval()
    batch = _batch(5)
    torch.testing.assert_close(fresh(batch)["logit"], old(batch)["logit"], rtol=0, atol=0)
    # one named loss term per label
    fresh.train()
    out = fresh(batch)
    terms = fresh.loss(out, batch, aux_weight=0.5)
    expect = {"click", "total"} | ({"make"} if "make" in strategy and not frozen_make else set())
    assert set(terms) == expect
    ref = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], batch["label"])
    torch.testing.assert_close(terms["click"], ref)
    for name, aux in out["aux_logits"].items():   # the trainer's loss before the refactor
        ref = ref + 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(aux, batch["label"])
    torch.testing.assert_close(terms["total"], ref, rtol=0, atol=0)


def test_registry_creates_blocks_by_name_and_rejects_unknown():
    assert {"cafu", "mpsa", "seq_heads", "region_mask", "mmoe", "esmm", "id_features"} <= set(list_blocks())
    assert all(describe_blocks().values())
    heads = create("heads", in_dim=4, tasks=["click"], hidden=[3])
    assert isinstance(heads, TaskHeads)
    with pytest.raises(ConfigError, match="unknown block 'nope'"):
        create("nope")


def test_cafu_weights_follow_the_context_and_sum_to_one():
    torch.manual_seed(0)
    cafu = CAFU(["image", "text"], dim=4, context_dim=2, hidden=[8])
    img, txt = torch.randn(5, 4), torch.randn(5, 4)
    out = cafu({"image": img, "text": txt}, torch.randn(5, 2))
    w = cafu.last_weights
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    torch.testing.assert_close(out, w[:, :1] * img + w[:, 1:] * txt)
    # a context that pushes the MLP towards 'image' gets (nearly) the image features
    with torch.no_grad():
        for p in cafu.mlp.parameters():
            p.zero_()
        cafu.mlp.out.bias.copy_(torch.tensor([20.0, -20.0]))
    torch.testing.assert_close(cafu({"image": img, "text": txt}, torch.randn(5, 2)), img, atol=1e-6, rtol=0)


def test_mpsa_ignores_padding_and_is_permutation_equivariant():
    torch.manual_seed(0)
    m = MultiPerspectiveSelfAttention(8, {"mm": 4, "price": 2}, heads=2, ff=16, att_dim=4).eval()
    x, mm, pr = torch.randn(2, 5, 8), torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    y = m(x, {"mm": mm, "price": pr}, pad)
    x2, mm2 = x.clone(), mm.clone()
    x2[1, 3:] = 99.0
    mm2[1, 3:] = -99.0
    y2 = m(x2, {"mm": mm2, "price": pr}, pad)
    torch.testing.assert_close(y[1, :3], y2[1, :3], atol=1e-5, rtol=0)
    perm = torch.tensor([4, 2, 0, 1, 3])
    yp = m(x[:1, perm], {"mm": mm[:1, perm], "price": pr[:1, perm]}, pad[:1])
    torch.testing.assert_close(yp[0], y[0, perm], atol=1e-5, rtol=0)


def test_sequential_heads_feed_the_previous_task_and_region_mask_gates():
    torch.manual_seed(0)
    h = SequentialHeads(6, ["click", "cart", "purchase"], hidden=[8, 4], n_regions=3)
    x, r = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    out = h(x, r)
    assert set(out) == {"click", "cart", "purchase"}
    # purchase depends on the click tower through the chain: its gradient reaches click's first layer
    out["purchase"].sum().backward()
    assert h.first["click"].shared.weight.grad.abs().sum() > 0
    assert h.first["cart"].shared.weight.grad.abs().sum() > 0
    rm = RegionMask(6, 4, n_regions=3)
    with torch.no_grad():
        rm.gate[0].weight.zero_()
        rm.gate[0].bias.fill_(50.0)          # mask = 1: shared parameters only
    torch.testing.assert_close(rm(x, r), rm.shared(x), atol=1e-6, rtol=0)
    with torch.no_grad():
        rm.gate[0].bias.fill_(-50.0)         # mask = 0: each sample's regional parameters
    expect = torch.stack([x[i] @ rm.regional_w[r[i]] + rm.regional_b[r[i]] for i in range(4)])
    torch.testing.assert_close(rm(x, r), expect, atol=1e-5, rtol=0)
    off = RegionMask(6, 4, n_regions=3, enabled=False)
    torch.testing.assert_close(off(x, r), off.shared(x))


def test_esmm_probabilities_are_chained_products_and_mmoe_gates_mix_experts():
    torch.manual_seed(0)
    e = ESMMHeads(5, ["click", "cart", "purchase"], hidden=[4])
    x = torch.randn(6, 5)
    out = e(x)
    p = {t: torch.sigmoid(out[t]) for t in out}
    z = {t: e.towers[t](x).squeeze(-1) for t in e.tasks}
    torch.testing.assert_close(p["cart"], torch.sigmoid(z["click"]) * torch.sigmoid(z["cart"]), atol=1e-5, rtol=1e-4)
    assert (p["purchase"] <= p["cart"] + 1e-6).all() and (p["cart"] <= p["click"] + 1e-6).all()
    m = MMoEHeads(5, ["click", "purchase"], n_experts=3, expert_dim=4, hidden=[4])
    assert {k: v.shape for k, v in m(x).items()} == {"click": (6,), "purchase": (6,)}


def test_multitask_loss_named_terms_masks_and_weights():
    logits = {"click": torch.tensor([0.0, 2.0, -1.0]), "purchase": torch.tensor([1.0, -1.0, 0.5])}
    labels = {"click": torch.tensor([1.0, 0.0, 1.0]), "purchase": torch.tensor([0.0, 0.0, 1.0])}
    mask = torch.tensor([True, True, False])
    terms = MultiTaskLoss({"purchase": 1.0, "click": 0.3})(logits, labels, mask)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(terms["click"], 0.3 * bce(logits["click"][:2], labels["click"][:2]))
    torch.testing.assert_close(terms["total"], terms["click"] + terms["purchase"])
    with pytest.raises(KeyError, match="no head 'cart'"):
        MultiTaskLoss({"cart": 1.0})(logits, labels)
    assert np.isfinite(float(terms["total"]))

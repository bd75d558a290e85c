"""MOON2.0's four switches in pre-training (issue 20): modality MoE, dual-level alignment,
co-augmentation and dynamic sample filtering; each changes what it should, and compare gains the rows."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from mmrank.pretrain.config import PretrainConfig
from mmrank.pretrain.model import BOTH, EXPERTS, IMAGE_ONLY, TEXT_ONLY, ModalityMoE, SCLModel
from mmrank.pretrain.train import modality_inputs, train
from mmrank.testing.audit import opens_under
from mmrank.testing.markets import micro_market
from mmrank.testing.pretrain import latent_pairs

torch.set_num_threads(1)
TINY = dict(epochs=3, batch_size=128, queue_size=256, dim=32, nested_dims=[16, 32], hidden=32,
            lr=3e-3, warmup_steps=2)
FAST = dict(image_encoder="cnn-small", text_encoder="hash-bow", epochs=3, batch_size=32,
            queue_size=128, dim=32, nested_dims=[16, 32], hidden=32)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return micro_market(tmp_path_factory.mktemp("moon") / "run", seed=2)


# ---- modality-driven MoE -------------------------------------------------------------------------

def test_router_sends_each_composition_to_its_expert_and_the_shared_one() -> None:
    torch.manual_seed(0)
    moe = ModalityMoE(8, 16)
    for e in moe.experts:  # give every expert a distinct, non-zero output
        torch.nn.init.normal_(e[-1].weight)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    comp = torch.tensor([IMAGE_ONLY, IMAGE_ONLY, TEXT_ONLY, TEXT_ONLY, BOTH, BOTH])
    g = moe.gates(torch.cat([a, b], -1), comp)
    allowed = {IMAGE_ONLY: {0, 3}, TEXT_ONLY: {1, 3}, BOTH: {2, 3}}
    for row, c in enumerate(comp.tolist()):
        used = {e for e in range(len(EXPERTS)) if g[row, e] > 0}
        assert used == allowed[c], (row, c, g[row])
    assert torch.allclose(g.sum(-1), torch.ones(6))
    before = moe(a, b, comp)
    load = moe.last_load
    assert load is not None and abs(float(load.sum()) - 1.0) < 1e-6
    assert float(load[0]) > 0 and float(load[1]) > 0 and float(load[2]) > 0
    # changing the text-only expert moves the text-only samples and no other
    with torch.no_grad():
        moe.experts[1][-1].bias.add_(1.0)
    after = moe(a, b, comp)
    moved = (after - before).abs().sum(-1) > 1e-6
    assert moved.tolist() == [False, False, True, True, False, False]


def test_router_load_is_logged_per_epoch_and_sums_to_one() -> None:
    feats, pairs, ids = latent_pairs(n_items=300, n_pairs=700)
    pairs.test = np.arange(700) >= 600
    report: dict = {}
    train(PretrainConfig(variant="moe", **TINY), feats, pairs, ids, log=lambda m: None, report=report)
    assert len(report["epochs"]) == TINY["epochs"]
    for rec in report["epochs"]:
        item, query = rec["router_load"]["item"], rec["router_load"]["query"]
        assert abs(sum(item.values()) - 1) < 1e-5 and abs(sum(query.values()) - 1) < 1e-5
        assert item["image"] == item["text"] == 0.0 and item["both"] > 0   # every item has both
        assert query["both"] == 0.0 and query["image"] > 0 and query["text"] > 0


def test_plain_tower_has_no_router() -> None:
    feats, pairs, ids = latent_pairs(n_items=300, n_pairs=700)
    pairs.test = np.arange(700) >= 600
    report: dict = {}
    model = train(PretrainConfig(**{**TINY, "epochs": 1}), feats, pairs, ids, log=lambda m: None,
                  report=report)
    assert model.moe is None and "router_load" not in report["epochs"][0]


def test_missing_modality_is_read_from_the_items_columns_and_masks_the_tower(market, tmp_path) -> None:
    from mmrank.pretrain.data import read_catalog, read_pairs

    cat = read_catalog(market)
    pairs = read_pairs(market, cat)
    plain = modality_inputs(cat, pairs, len(cat.item_ids))  # no columns: everything present
    assert bool(plain.item_img.all()) and bool(plain.item_txt.all())
    run = tmp_path / "run"
    shutil.copytree(market / "data", run / "data")
    t = pq.read_table(run / "data" / "items.parquet")
    t = t.drop_columns([c for c in ("has_image", "has_title") if c in t.column_names])  # the market's: all True
    n = t.num_rows
    has_image = np.arange(n) % 3 != 0
    has_title = np.arange(n) % 3 != 1
    t = t.append_column("has_image", pa.array(has_image)).append_column("has_title", pa.array(has_title))
    pq.write_table(t, run / "data" / "items.parquet")
    cat2 = read_catalog(run)
    flags = modality_inputs(cat2, pairs, n)
    assert flags.item_img.numpy().tolist() == has_image.tolist()
    assert flags.item_txt.numpy().tolist() == has_title.tolist()
    # the item tower ignores the features of a missing photo
    torch.manual_seed(0)
    m = SCLModel(12, 10, dim=16, hidden=16, moe=True)
    h_img, h_txt = torch.randn(4, 12), torch.randn(4, 10)
    no_img = torch.tensor([False, False, True, True])
    yes = torch.ones(4, dtype=torch.bool)
    v1 = m.item(h_img, h_txt, no_img, yes)
    v2 = m.item(torch.randn(4, 12), h_txt, no_img, yes)
    assert torch.allclose(v1[:2], v2[:2]) and not torch.allclose(v1[2:], v2[2:])


def test_both_queries_are_read_and_trained() -> None:
    feats, pairs, ids = latent_pairs(n_items=300, n_pairs=700)
    pairs.test = np.arange(700) >= 600
    pairs.modality[::3] = 2  # BOTH: text row in qrow, photo row in qrow_image
    feats.qrow_image = np.where(pairs.modality == 2, np.arange(700), -1)
    report: dict = {}
    train(PretrainConfig(variant="moe", **{**TINY, "epochs": 1}), feats, pairs, ids,
          log=lambda m: None, report=report)
    assert report["epochs"][0]["router_load"]["query"]["both"] > 0


# ---- dual-level alignment ------------------------------------------------------------------------

def test_alignment_term_equals_a_direct_infonce() -> None:
    from mmrank.pretrain.losses import AlignmentLoss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(16, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(16, 8, generator=g), dim=-1)
    loss = AlignmentLoss(weight=0.5, init_temperature=0.1)
    got = loss(img, txt)["align_loss"].detach()
    direct = 0.5 * F.cross_entropy(img @ txt.t() / 0.1, torch.arange(16))
    assert abs(float(got) - float(direct)) < 1e-6
    # items without both modalities are left out
    keep = torch.arange(16) % 2 == 0
    got = loss(img, txt, present=keep)["align_loss"].detach()
    direct = 0.5 * F.cross_entropy(img[keep] @ txt[keep].t() / 0.1, torch.arange(8))
    assert abs(float(got) - float(direct)) < 1e-6


def test_align_term_is_logged_finite_and_decreasing() -> None:
    feats, pairs, ids = latent_pairs(n_items=300, n_pairs=700)
    pairs.test = np.arange(700) >= 600
    report: dict = {}
    train(PretrainConfig(variant="align", **{**TINY, "epochs": 4}), feats, pairs, ids,
          log=lambda m: None, report=report)
    al = [r["loss"]["align_loss"] for r in report["epochs"]]
    assert all(np.isfinite(al)) and al[-1] < al[0]
    assert any(k.startswith("contrastive_loss") for k in report["epochs"][0]["loss"])
    report = {}
    train(PretrainConfig(**{**TINY, "epochs": 1}), feats, pairs, ids, log=lambda m: None, report=report)
    assert "align_loss" not in report["epochs"][0]["loss"]


# ---- co-augmentation -----------------------------------------------------------------------------

def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_augmented_views_preserve_colour_and_move_pixels() -> None:
    from mmrank.pretrain.augment import VIEWS, augment_view

    solid = np.zeros((40, 40, 3)); solid[...] = (200, 30, 60)
    for v in (0, *VIEWS):
        got = np.asarray(augment_view(_png(solid), v, 7))
        assert (got == (200, 30, 60)).all(), v  # no colour jitter, grey or hue change
    halves = np.zeros((40, 40, 3)); halves[:, :20] = (255, 0, 0); halves[:, 20:] = (0, 0, 255)
    flipped = np.asarray(augment_view(_png(halves), 1, 7))
    assert (flipped[:, 0] == (0, 0, 255)).all() and (flipped[:, -1] == (255, 0, 0)).all()
    crop = np.asarray(augment_view(_png(halves), 2, 7))
    assert crop.shape == (40, 40, 3) and not np.array_equal(crop, halves)


def test_enriched_titles_come_from_visible_attributes(market) -> None:
    from mmrank.pretrain.augment import enriched_titles
    from mmrank.pretrain.data import read_catalog

    cat = read_catalog(market)
    titles = enriched_titles(cat, 3)
    t = pq.read_table(market / "data" / "items.parquet", columns=["colour", "article_type"])
    assert titles[0] == cat.titles and len(titles) == 3
    for r in range(5):
        assert t.column("colour")[r].as_py() in titles[1][r]
        assert t.column("article_type")[r].as_py() in titles[2][r]


def test_augmented_features_are_encoded_once_then_cached(market, monkeypatch) -> None:
    from mmrank import encoders
    from mmrank.pretrain.augment import build_augmented
    from mmrank.pretrain.data import build_features, read_catalog, read_pairs

    cat = read_catalog(market)
    feats = build_features(market, cat, read_pairs(market, cat), "cnn-small", "hash-bow", 64, 0)
    calls: list[str] = []
    real = encoders.create_tower

    def counting(name, modality, **kw):
        calls.append(modality)
        return real(name, modality, **kw)

    monkeypatch.setattr(encoders, "create_tower", counting)
    aug = build_augmented(market, cat, feats, "cnn-small", "hash-bow", 64, 0, views=4, titles=3)
    assert aug.images.shape[:2] == (4, len(cat.item_ids)) and aug.titles.shape[:2] == (3, len(cat.item_ids))
    assert torch.equal(aug.images[0], feats.item_img) and not torch.equal(aug.images[1], feats.item_img)
    assert sorted(set(calls)) == ["image", "text"]
    calls.clear()
    again = build_augmented(market, cat, feats, "cnn-small", "hash-bow", 64, 0, views=4, titles=3)
    assert calls == [] and torch.equal(again.images, aug.images)
    views = sorted(p.name for p in (market / "features").rglob("items_image_view*.npy"))
    assert views == ["items_image_view1.npy", "items_image_view2.npy", "items_image_view3.npy"]
    with pytest.raises(Exception):
        PretrainConfig(coaug_views=5)


# ---- dynamic sample filtering --------------------------------------------------------------------

def test_filter_drops_the_share_only_after_warmup() -> None:
    feats, pairs, ids = latent_pairs(n_items=300, n_pairs=700)
    pairs.test = np.arange(700) >= 600
    report: dict = {}
    train(PretrainConfig(variant="filter", filter_warmup_epochs=1, filter_share=0.2, **TINY),
          feats, pairs, ids, log=lambda m: None, report=report)
    shares = [r["dropped_share"] for r in report["epochs"]]
    assert shares[0] == 0.0 and shares[1:] == [int(0.2 * 600) / 600] * 2
    assert sorted(report["dropped"]) == [1, 2]
    assert all(len(v) == 120 and max(v) < 600 for v in report["dropped"].values())  # train rows only


def test_filter_drops_the_least_similar_pairs() -> None:
    from mmrank.pretrain.filtering import PairFilter

    f = PairFilter(warmup_epochs=2, share=0.3)
    rows = np.array([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    sim = np.array([0.9, -0.5, 0.2, 0.8, -0.1, 0.7, 0.6, 0.3, -0.9, 0.5])
    assert f.select(1, rows, sim).tolist() == rows.tolist() and f.dropped == {}
    kept = f.select(2, rows, sim)
    assert f.dropped == {2: [11, 14, 18]} and len(kept) == 7
    assert f.dropped_share(2, 10) == 0.3 and f.dropped_share(1, 10) == 0.0


# ---- compare rows, metrics.json, dropped.json, no truth ------------------------------------------

def test_compare_gains_the_moon_rows_without_reading_the_truth(tmp_path) -> None:
    from mmrank.pretrain.item_encoder import load_item_encoder
    from mmrank.pretrain.stage import compare

    run = micro_market(tmp_path / "run", seed=1)
    hidden = tmp_path / "hidden-truth"
    shutil.move(run / "truth", hidden)
    rows = ("scl", "moe", "align", "coaug", "filter", "moon2")
    with opens_under(hidden) as opened:
        compare(run, PretrainConfig(**FAST), variants=rows)
    assert opened == []
    table = json.loads((run / "pretrain" / "compare.json").read_text())
    assert list(table) == list(rows)
    logs = json.loads((run / "pretrain" / "metrics.json").read_text())["variants"]
    assert set(logs) == set(rows)
    last = {v: logs[v][0][-1] for v in rows}
    assert "router_load" in last["moe"] and "router_load" in last["moon2"]
    assert "router_load" not in last["scl"] and "align_loss" not in last["scl"]["loss"]
    assert "align_loss" in last["align"]["loss"] and "align_loss" in last["moon2"]["loss"]
    assert last["filter"]["dropped_share"] > 0 and last["moon2"]["dropped_share"] > 0
    dropped = json.loads((run / "pretrain" / "filter" / "dropped.json").read_text())
    assert dropped["epochs"][0]["epoch"] == 1 and dropped["epochs"][0]["request_ids"]
    assert not (run / "pretrain" / "scl" / "dropped.json").exists()
    enc = load_item_encoder(run, "pretrain/moon2")
    assert enc.model.moe is not None and enc.config["moe"] is True
    from PIL import Image

    vec = enc.encode_items(["red dress"], [Image.new("RGB", (64, 64), (200, 30, 60))])
    assert vec.shape == (1, 32) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5


def test_compare_cli_rejects_an_unknown_row(market) -> None:
    from typer.testing import CliRunner

    from mmrank.cli import app

    from mmrank.errors import ConfigError

    res = CliRunner().invoke(app, ["pretrain", "compare", "--run", str(market), "--variants", "scl,moon3"])
    assert isinstance(res.exception, ConfigError) and "moon3" in str(res.exception)  # exit 2 via main
    assert not (market / "pretrain" / "scl").exists()  # nothing trained first

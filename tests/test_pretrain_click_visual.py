"""Click-supervised visual encoding (issue 22, part 1): the click pairs are point-in-time, the two
image-tower terms are logged and move the image tower, the row `click-visual` trains in `pretrain
compare`, and the CTR strategy `click-visual` trains on its table without opening R/truth/."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmrank.data.io import read_clicks
from mmrank.errors import ConfigError, DataError
from mmrank.pretrain.clicks import (ClickPairs, ClickVisualInputs, check_point_in_time, click_pairs,
                                    pretrain_cutoff, run_click_pairs, to_rows)
from mmrank.pretrain.config import PretrainConfig
from mmrank.pretrain.losses import ClickVisualLoss
from mmrank.pretrain.model import SCLModel
from mmrank.pretrain.train import train
from mmrank.testing.audit import ctr_train_truth_opens, opens_under
from mmrank.testing.markets import micro_market
from mmrank.testing.pretrain import latent_pairs

torch.set_num_threads(1)
TINY = dict(epochs=3, batch_size=128, queue_size=256, dim=32, nested_dims=[16, 32], hidden=32,
            lr=3e-3, warmup_steps=2, click_visual_batch=64)
FAST = dict(image_encoder="cnn-small", text_encoder="hash-bow", epochs=2, batch_size=32,
            queue_size=128, dim=32, nested_dims=[16, 32], hidden=32, click_visual_batch=32)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return micro_market(tmp_path_factory.mktemp("clickvis") / "run", seed=3)


# ---- the click pairs -------------------------------------------------------------------------------

def test_pairs_by_hand() -> None:
    # user 1: A,B at 10 (one request), C at 20, C again at 22, D at 30 (at the cutoff: dropped)
    # user 2: X at 5, Y at 8, X at 8 (Y and X share ts 8: each pairs with X@5; X->X is a re-click)
    user = np.array([1, 1, 2, 1, 1, 2, 2, 1])
    item = np.array([11, 12, 91, 13, 13, 92, 91, 14])
    ts = np.array([10, 10, 5, 20, 22, 8, 8, 30])
    p = click_pairs(user, item, ts, cutoff=30)
    got = sorted(zip(p.user.tolist(), p.first.tolist(), p.second.tolist(), p.first_ts.tolist(), p.ts.tolist()))
    # B (the later row at ts 10) is user 1's latest click before 20; C@22's latest earlier click is C@20
    assert got == [(1, 12, 13, 10, 20), (2, 91, 92, 5, 8)]
    check_point_in_time(p, 30)
    assert len(click_pairs(user, item, ts, cutoff=30, max_gap=2)) == 0   # 10 s and 3 s apart


def test_a_leak_is_seen() -> None:
    rng = np.random.default_rng(0)
    user, item = rng.integers(0, 20, 400), rng.integers(0, 50, 400)
    ts = rng.integers(0, 1000, 400)
    good = click_pairs(user, item, ts, cutoff=700)
    assert len(good) > 50 and good.ts.max() < 700
    check_point_in_time(good, 700)
    # leak 1: clicks of the test period read (the builder given a later cutoff)
    with pytest.raises(DataError, match="pre-training split"):
        check_point_in_time(click_pairs(user, item, ts, cutoff=10**6), 700)
    # leak 2: each click paired with the user's *next* click instead of the previous one
    future = ClickPairs(good.user, good.second, good.first, good.ts, good.first_ts, 700)
    with pytest.raises(DataError, match="not before its own time"):
        check_point_in_time(future, 700)
    # leak 3: a click at the pair's own time used as its first click
    same = ClickPairs(good.user, good.first, good.second, good.ts.copy(), good.ts, 700)
    with pytest.raises(DataError, match="not before its own time"):
        check_point_in_time(same, 700)


def test_run_pairs_match_a_slow_obvious_builder_and_ignore_the_test_period(market, tmp_path) -> None:
    cut = pretrain_cutoff(market)
    manifest = json.loads((market / "data" / "manifest.json").read_text())
    assert cut <= manifest["split_ts"]
    pairs = run_click_pairs(market)
    assert len(pairs) > 100 and pairs.ts.max() < cut and (pairs.first_ts < pairs.ts).all()
    # slow and obvious: for every click before the cut, the same user's latest earlier click
    t = pq.read_table(market / "data" / "events.parquet", columns=["ts", "user_id", "item_id", "event"])
    ev = [r for r in t.to_pylist() if r["event"] == "click" and r["ts"] < cut]
    want = set()
    for i, c in enumerate(ev):
        earlier = [(e["ts"], j, e) for j, e in enumerate(ev) if e["user_id"] == c["user_id"] and e["ts"] < c["ts"]]
        if earlier:
            prev = max(earlier, key=lambda x: (x[0], x[1]))[2]
            if prev["item_id"] != c["item_id"]:
                want.add((c["user_id"], prev["item_id"], c["item_id"], prev["ts"], c["ts"]))
    got = set(zip(pairs.user.tolist(), pairs.first.tolist(), pairs.second.tolist(), pairs.first_ts.tolist(),
                  pairs.ts.tolist()))
    assert got == want
    # clicks of the test period (here: a flood of them) cannot change the pairs
    copy = tmp_path / "run"
    shutil.copytree(market / "data", copy / "data")
    late = pa.table({"ts": pa.array(np.arange(cut, cut + 500), t.schema.field("ts").type),
                     "user_id": pa.array(np.repeat(pairs.user[:50], 10), t.schema.field("user_id").type),
                     "item_id": pa.array(np.tile(pairs.first[:10], 50), t.schema.field("item_id").type),
                     "event": pa.array(["click"] * 500)})
    full = pq.read_table(market / "data" / "events.parquet")
    extra = pa.table({c: (late.column(c) if c in late.column_names else pa.nulls(500, full.schema.field(c).type))
                      for c in full.column_names})
    pq.write_table(pa.concat_tables([full, extra.cast(full.schema)]), copy / "data" / "events.parquet")
    assert (len(read_clicks(copy, 10**9, 'test')[0])
            == len(read_clicks(market, 10**9, 'test')[0]) + 500)
    assert run_click_pairs(copy).digest() == pairs.digest()


def test_to_rows_drops_unknown_items_and_items_without_a_photo() -> None:
    p = ClickPairs(np.zeros(3, np.int64), np.array([5, 7, 9]), np.array([7, 99, 5]), np.zeros(3, np.int64),
                   np.ones(3, np.int64), 2)
    ids = np.array([9, 7, 5])
    a, b = to_rows(p, ids)
    assert a.tolist() == [2, 0] and b.tolist() == [1, 2]          # 99 is not in the catalog
    a, b = to_rows(p, ids, has_image=np.array([True, False, True]))
    assert a.tolist() == [0] and b.tolist() == [2]                # item 7 has no photo


# ---- the two terms -----------------------------------------------------------------------------------

def _inputs(feats, n_items: int, seed: int = 0) -> ClickVisualInputs:
    """Click pairs between latent neighbours (what users click in a row) and 3 noisy photo views."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(feats.item_img, dim=-1)
    sim = x @ x.t()
    sim.fill_diagonal_(-2)
    first = np.random.default_rng(seed).integers(0, n_items, 2000)
    second = sim.argmax(1).numpy()[first]
    views = torch.stack([feats.item_img] + [feats.item_img + 0.3 * torch.randn(feats.item_img.shape, generator=g)
                                            for _ in range(2)])
    return ClickVisualInputs(first, second, views, np.arange(n_items))


def test_loss_reaches_only_the_image_tower_and_masks_same_items() -> None:
    torch.manual_seed(0)
    model = SCLModel(64, 48, dim=16, hidden=16)
    h = torch.randn(6, 64)
    z = model.image_query(h)
    loss = ClickVisualLoss(click_weight=1.0, view_weight=1.0)
    terms = loss(z[:3], z[3:], z[:3], z[:3].detach() * 0.9, first_ids=torch.tensor([1, 2, 3]),
                 second_ids=torch.tensor([4, 5, 6]), view_ids=torch.tensor([1, 2, 3]))
    assert sorted(terms) == ["click_visual_loss", "view_ssl_loss"]
    sum(terms.values()).backward()
    assert model.g_img.proj.weight.grad is not None and model.g_img.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.g_txt.parameters())
    # a key showing the anchor's own item is no negative: with every other key the anchor's item,
    # only the positive is left and the term is 0
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    t = ClickVisualLoss(click_weight=1.0).click_term(q[:1], k, torch.tensor([0]), torch.tensor([7]),
                                                      torch.tensor([4]), torch.tensor([4, 7, 7]))
    assert float(t["click_visual_loss"].detach()) == pytest.approx(0.0, abs=1e-6)
    t = ClickVisualLoss(click_weight=1.0).click_term(q[:1], k, torch.tensor([0]), torch.tensor([7]),
                                                      torch.tensor([4]), torch.tensor([4, 8, 9]))
    assert float(t["click_visual_loss"].detach()) > 0


def test_both_terms_are_logged_by_name_and_change_the_image_tower() -> None:
    feats, pairs, ids = latent_pairs(n_items=300, n_pairs=700)
    pairs.test = np.arange(700) >= 600
    clicks = _inputs(feats, 300)
    runs = {}
    for v in ("scl", "click-visual"):
        report: dict = {}
        model = train(PretrainConfig(variant=v, **TINY), feats, pairs, ids, log=lambda m: None, report=report,
                      clicks=clicks)
        runs[v] = (model, report["epochs"])
    (scl, scl_log), (cv, cv_log) = runs["scl"], runs["click-visual"]
    assert len(cv_log) == TINY["epochs"]
    for rec in cv_log:
        for name in ("click_visual_loss", "view_ssl_loss"):
            assert math.isfinite(rec["loss"][name]) and rec["loss"][name] > 0
    assert all("click_visual_loss" not in r["loss"] and "view_ssl_loss" not in r["loss"] for r in scl_log)
    # the click term learns (neighbours become each other's nearest), and the image tower moved
    assert cv_log[-1]["loss"]["click_visual_loss"] < cv_log[0]["loss"]["click_visual_loss"]
    assert not torch.allclose(scl.g_img.proj.weight, cv.g_img.proj.weight)
    # the same seed without the switch trains the same model as scl: only the switch made the change
    again = train(PretrainConfig(variant="scl", **TINY), feats, pairs, ids, log=lambda m: None, clicks=clicks)
    assert torch.equal(again.g_img.proj.weight, scl.g_img.proj.weight)
    with pytest.raises(ConfigError, match="click_visual"):
        train(PretrainConfig(variant="click-visual", **TINY), feats, pairs, ids, log=lambda m: None)


# ---- compare row and CTR strategy, never reading R/truth ---------------------------------------------------

def test_row_and_strategy_train_without_opening_the_truth(market, tmp_path) -> None:
    from typer.testing import CliRunner

    from mmrank.cli import app
    from mmrank.ctr.artifacts import load_model
    from mmrank.pretrain.stage import compare

    run = tmp_path / "run"
    shutil.copytree(market, run)
    with opens_under(run / "truth") as opened:
        compare(run, PretrainConfig(**FAST), variants=("scl", "click-visual"))
    assert opened == []
    assert list(json.loads((run / "pretrain" / "compare.json").read_text())) == ["scl", "click-visual"]
    logs = json.loads((run / "pretrain" / "metrics.json").read_text())["variants"]
    assert "click_visual_loss" in logs["click-visual"][0][-1]["loss"]
    assert "view_ssl_loss" in logs["click-visual"][0][-1]["loss"]
    assert "click_visual_loss" not in logs["scl"][0][-1]["loss"]
    made = json.loads((run / "pretrain" / "click-visual" / "lineage.json").read_text())["inputs"]
    assert made["click_pairs"] == run_click_pairs(run).digest() and "data/events" in made
    assert json.loads((run / "pretrain" / "click-visual" / "config.json").read_text())[
        "pretrain_config"]["click_visual"] is True           # the row's encoder records the switch on

    cfg = tmp_path / "ctr.yaml"
    cfg.write_text("ctr:\n  model:\n    emb_dim: 8\n    mlp_hidden: [32, 16]\n  train:\n    batch_size: 512\n")
    assert ctr_train_truth_opens(run, "click-visual", cfg) == []   # the truth is there; training never opens it
    table = run / "pretrain" / "click-visual" / "items"
    version = (run / "pretrain" / "click-visual" / "version.txt").read_text().strip()
    assert json.loads((table / "lineage.json").read_text())["inputs"]["encoder"] == version
    conf = json.loads((run / "ctr" / "click-visual" / "config.json").read_text())
    assert conf["representations"] == f"encoder:{version}"
    stamp = (table / "lineage.json").stat().st_mtime_ns
    model, space, _ = load_model(run, "click-visual")      # re-attaches the click-visual table
    assert model.vectors is not None and space.vec_items is not None
    assert (table / "lineage.json").stat().st_mtime_ns == stamp   # embedded once, then read
    # compare (evaluation reads the truth's appeal) prints the bias of all four
    res = CliRunner().invoke(app, ["ctr", "compare", "--run", str(run), "--seeds", "1", "--strategies",
                                        "id,simtier+make,click-visual,debias", "--make-epochs", "1", "--curve", "",
                                   "--threads", "1", "--config", str(cfg)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "Exposure bias" in res.output
    saved = json.loads((run / "ctr" / "compare.json").read_text())
    assert saved["click_visual"] == f"encoder:{version}"
    for s in ("id", "simtier+make", "click-visual", "debias"):
        assert f"| {s} |" in res.output and -1 <= saved[s]["bias"]["partial_spearman"]["mean"] <= 1


def test_strategy_without_its_encoder_says_what_to_run(market, tmp_path) -> None:
    from mmrank.ctr.stage import train_strategy
    from mmrank.errors import MMRankError

    run = tmp_path / "run"
    shutil.copytree(market / "data", run / "data")
    with pytest.raises(MMRankError, match="--variants scl,click-visual"):
        train_strategy(run, "click-visual", progress=False)

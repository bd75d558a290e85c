"""Issue 22, parts 2 and 3: the VisualDebias block (strategy ``debias``), its point-in-time impression
counts, the exposure-bias measure (evaluation code) and the debias strategy trained without R/truth/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmrank.ctr.debias import DebiasConfig, VisualDebias, ensure_impressions, impressions_so_far
from mmrank.ctr.models import STRATEGIES, CtrConfig, CtrModel, MakeConfig
from mmrank.ctr.trainer import TrainConfig, predict, train
from mmrank.report.bias import exposure_bias, partial_spearman, spearman_within_bins
from mmrank.testing.audit import ctr_train_truth_opens
from mmrank.testing.ctr import planted_batches

torch.set_num_threads(2)
SMALL = CtrConfig(strategy="debias", emb_dim=8, att_hidden=[16, 8], mlp_hidden=[32, 16], n_tiers=10,
                  history_len=20, simtier_in="model",
                  make=MakeConfig(proj_dim=8, att_hidden=[16, 8], mlp_hidden=[32, 16, 8]),
                  debias=DebiasConfig(dim=8, hidden=16))


def test_impressions_are_counted_point_in_time_from_training_rows_only() -> None:
    item = np.array([7, 7, 7, 3, 7, 3, 7])
    ts = np.array([10, 10, 20, 5, 30, 40, 50])
    train = np.array([True, True, True, True, False, True, False])
    # row 4 (ts 30, test) sees the three earlier training rows of item 7; row 6 too (row 4 is test);
    # two rows at the same ts do not see each other
    assert impressions_so_far(item, ts, train).tolist() == [0, 0, 2, 0, 3, 1, 3]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    _, enc, sizes, vecs = planted_batches(tmp_path_factory.mktemp("debias"), n_rows=6000, n_items=200,
                                          n_users=200, seed=4)
    return enc, sizes, vecs


def test_the_block_trains_and_changes_the_features(planted) -> None:
    enc, sizes, vecs = planted
    ensure_impressions(enc)
    assert enc.extra["impressions"].max() > 10 and enc.extra["impressions"].min() == 0
    torch.manual_seed(0)
    model = CtrModel(SMALL, sizes, vecs)
    assert isinstance(model.debias, VisualDebias)
    v = vecs[2:]
    before = model.debias(v).detach().clone()
    from mmrank.ctr.data import make_batch

    batch = make_batch(enc, enc.train_rows()[:512], history_len=20)
    model.train()
    terms = model.loss(model(batch), batch)
    assert {"click", "debias_adv", "debias_con", "total"} <= set(terms)
    assert float(terms["debias_con"].detach()) > 0 and float(terms["debias_adv"].detach()) > 0
    stats = train(model, enc, cfg=TrainConfig(batch_size=256), progress=False)
    assert np.isfinite(stats["loss"][0])
    after = model.debias(v).detach()
    assert (after - before).norm(dim=1).mean() > 0.05       # the adjustment moved
    assert after.shape == (len(v), SMALL.debias.dim)
    # scoring needs no impression counts (serving and new data have none)
    del enc.extra["impressions"]
    p = predict(model, enc)
    assert p.shape == (len(enc.test_rows()),) and np.all((p > 0) & (p < 1))


def test_the_adversary_gradient_is_reversed() -> None:
    """The adjustment is pushed to make the impression count *less* predictable: after steps on the
    adversarial term alone with the adversary held fixed, its error rises."""
    torch.manual_seed(0)
    block = VisualDebias(8, DebiasConfig(dim=4, hidden=16))
    v = torch.nn.functional.normalize(torch.randn(64, 8), dim=1)
    imp = torch.exp(2 * v[:, 0] + 2).round()                # exposure readable from the features
    items = torch.arange(64)
    opt = torch.optim.SGD(block.adjust.parameters(), lr=0.5)
    loss0 = float(block.losses(v, block(v), imp, items)["debias_adv"].detach())
    for _ in range(20):
        opt.zero_grad()
        block.losses(v, block(v), imp, items)["debias_adv"].backward()
        opt.step()
    assert float(block.losses(v, block(v), imp, items)["debias_adv"].detach()) > loss0


def _items(seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    appeal = rng.normal(size=n)
    exposure = np.exp(0.8 * appeal + rng.normal(size=n))           # better items shown more, not only
    train_counts = rng.poisson(5 + 40 * exposure / exposure.mean())
    ids = 100 + np.arange(n)
    train_items = np.repeat(ids, train_counts)
    test_items = np.repeat(ids, 5)
    users = np.tile(np.arange(5), n)
    return rng, ids, appeal, train_counts, train_items, test_items, users


def test_bias_measure_is_near_zero_for_appeal_scores_and_high_for_exposure_scores() -> None:
    rng, ids, appeal, counts, train_items, test_items, users = _items()
    idx = test_items - 100
    labels = (rng.random(len(test_items)) < 1 / (1 + np.exp(-appeal[idx]))).astype(np.int8)
    fair = 1 / (1 + np.exp(-(appeal[idx] + 0.05 * rng.normal(size=len(idx)))))
    follows = np.log1p(counts[idx]) + 0.05 * rng.normal(size=len(idx))
    b_fair = exposure_bias(test_items, fair, users, labels, train_items, ids, appeal)
    b_exp = exposure_bias(test_items, follows, users, labels, train_items, ids, appeal)
    assert abs(b_fair["partial_spearman"]) < 0.1, b_fair
    # within a decile appeal still varies (and drives exposure): a coarser control than the partial one
    assert abs(b_fair["spearman_within_deciles"]) < 0.2, b_fair
    assert b_fair["spearman"] > 0.3                 # raw correlation exists: appeal drives exposure
    assert b_exp["partial_spearman"] > 0.5 and b_exp["spearman_within_deciles"] > 0.5, b_exp
    # controlled for each impression's true click probability instead (appeal and a varying context):
    # a scorer of that probability has no exposure bias, one that follows exposure has
    true_p = 1 / (1 + np.exp(-(appeal[idx] + 0.5 * rng.normal(size=len(idx)))))
    b_fair = exposure_bias(test_items, true_p + 1e-4 * rng.normal(size=len(idx)), users, labels, train_items,
                           ids, appeal, true_p=true_p)
    b_exp = exposure_bias(test_items, follows, users, labels, train_items, ids, appeal, true_p=true_p)
    assert abs(b_fair["partial_spearman_true_ctr"]) < 0.1 and abs(b_fair["oracle_partial_spearman"]) < 0.1
    assert b_exp["partial_spearman_true_ctr"] > 0.5, b_exp
    assert b_fair["n_items"] == 400 and 0 < b_fair["low_n"] < len(test_items)
    assert b_fair["low_gauc"] > 0.5                 # appeal scores rank clicks on rare items too


def test_partial_spearman_by_hand() -> None:
    x = np.array([1.0, 2, 3, 4, 5, 6])
    z = np.array([1.0, 2, 3, 4, 5, 6])
    y = np.array([2.0, 1, 4, 3, 6, 5])
    # all of x's ranks are z's: nothing is left once z is controlled for
    assert np.isnan(partial_spearman(x, y, z))
    z2 = np.array([3.0, 1, 2, 6, 4, 5])
    assert -1 <= partial_spearman(x, y, z2) <= 1
    assert spearman_within_bins(x, x, np.zeros(6), 2) == pytest.approx(1.0)


def _market_with_embeddings(run: Path) -> Path:
    from mmrank.store.backends import create_table
    from mmrank.testing.markets import micro_market

    micro_market(run)
    import pyarrow.parquet as pq

    ids = pq.read_table(run / "data" / "items.parquet", columns=["item_id"]).column("item_id").to_numpy()
    vecs = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    t = create_table(run / "embeddings", version="test-v1", dim=8)
    t.put(ids.astype(np.int64), vecs, version="test-v1")
    t.publish()
    t.close()
    return run


@pytest.mark.slow
def test_debias_trains_without_reading_the_truth_and_compare_reports_the_bias(tmp_path: Path) -> None:
    from mmrank.cli import app

    assert "debias" in STRATEGIES
    run = _market_with_embeddings(tmp_path / "run")
    cfg = tmp_path / "ctr.yaml"
    cfg.write_text("ctr:\n  model:\n    emb_dim: 8\n    mlp_hidden: [32, 16]\n    debias:\n      dim: 8\n"
                   "  train:\n    batch_size: 512\n")
    assert ctr_train_truth_opens(run, "debias", cfg) == []   # the truth is there; training never opens it
    runner = CliRunner()
    assert (run / "ctr" / "debias" / "metrics.json").exists()
    # compare (evaluation reads the truth's appeal) prints and writes the bias of every strategy
    res = runner.invoke(app, ["ctr", "compare", "--run", str(run), "--seeds", "1", "--strategies",
                              "id,simtier+make,debias", "--make-epochs", "1", "--curve", "", "--threads", "1",
                              "--config", str(cfg)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "Exposure bias" in res.output and "| debias |" in res.output
    saved = json.loads((run / "ctr" / "compare.json").read_text())
    for s in ("id", "simtier+make", "debias"):
        b = saved[s]["bias"]
        assert -1 <= b["partial_spearman"]["mean"] <= 1 and 0 <= b["low_gauc"]["mean"] <= 1, b
        assert -1 <= b["partial_spearman_true_ctr"]["mean"] <= 1, b   # every test impression has its slot

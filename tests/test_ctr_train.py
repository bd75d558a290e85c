"""CTR trainer API (epoch rules), learning on planted data, the run-level stage and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mmrank.models.layers import ItemVectors
from mmrank.ctr.models import CtrConfig, CtrModel, MakeConfig, MakeModule
from mmrank.testing.ctr import planted_batches, synthetic_run
from mmrank.ctr.trainer import TrainConfig, predict, pretrain_make, train
from mmrank.errors import ConfigError
from mmrank.eval import auc

torch.set_num_threads(2)
SMALL = CtrConfig(emb_dim=8, att_hidden=[16, 8], mlp_hidden=[32, 16], n_tiers=10,
                  make=MakeConfig(proj_dim=8, att_hidden=[16, 8], mlp_hidden=[32, 16, 8]))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Clicks driven by target-vs-interest similarity (what SimTier sees) and an item bias."""
    return planted_batches(tmp_path_factory.mktemp("ctr"), n_rows=12_000, n_items=300, n_users=300, seed=3,
                           sim_weight=4.0)


def _cfg(strategy: str) -> CtrConfig:
    return CtrConfig.model_validate({**SMALL.model_dump(), "strategy": strategy, "history_len": 20})


def test_one_epoch_rule_is_enforced(planted):
    data, enc, sizes, vecs = planted
    model = CtrModel(_cfg("id"), sizes)
    with pytest.raises(ConfigError, match="one-epoch rule"):
        train(model, enc, id_epochs=2, progress=False)
    rows = enc.train_rows()[:2048]
    stats = train(model, enc, rows, id_epochs=2, allow_id_multi_epoch=True, progress=False,
                  cfg=TrainConfig(batch_size=512))
    assert len(stats["loss"]) == 2


def test_pretrain_make_refuses_id_parameters(planted):
    data, enc, sizes, vecs = planted
    with pytest.raises(ConfigError, match="expected a MakeModule"):
        pretrain_make(CtrModel(_cfg("id"), sizes), enc, epochs=2)
    make = MakeModule(ItemVectors(vecs), SMALL.make)
    make.sneaky = torch.nn.Embedding(10, 2)
    with pytest.raises(ConfigError, match="ID embedding"):
        pretrain_make(make, enc, epochs=2)


@pytest.mark.slow
def test_simtier_and_make_learn_what_ids_cannot(planted):
    """On planted data the similarity signal is invisible to IDs of rare items: SimTier and a
    multi-epoch MAKE beat the one-epoch ID model, and MAKE's loss falls over epochs."""
    data, enc, sizes, vecs = planted
    te = enc.test_rows()
    y = data.label[te].astype(int)
    tc = TrainConfig(batch_size=128, lr=5e-3, make_lr=5e-3)
    scores = {}
    for s in ("id", "simtier"):
        torch.manual_seed(0)
        m = CtrModel(_cfg(s), sizes, vecs)
        train(m, enc, cfg=tc, progress=False)
        scores[s] = auc(y, predict(m, enc))
    torch.manual_seed(0)
    make = MakeModule(ItemVectors(vecs), SMALL.make)
    st = pretrain_make(make, enc, epochs=3, cfg=tc, progress=False)
    assert st["loss"][-1] < st["loss"][0]
    m = CtrModel(_cfg("make"), sizes, vecs, make=make, freeze_make=True)
    train(m, enc, cfg=tc, progress=False)
    scores["make"] = auc(y, predict(m, enc))
    assert scores["id"] > 0.55, scores
    assert scores["simtier"] > scores["id"] + 0.01, scores
    assert scores["make"] > scores["id"] + 0.01, scores


def _make_run(tmp_path, n_rows=6000):
    return synthetic_run(tmp_path / "run", n_rows=n_rows)


@pytest.mark.slow
def test_compare_train_and_predict_end_to_end(tmp_path):
    from mmrank.cli import app
    from mmrank.ctr.stage import compare

    run = _make_run(tmp_path)
    res = compare(run, seeds=2, make_epochs=1, curve=(0, 1), cfg=SMALL, progress=False,
                  train_cfg=TrainConfig(batch_size=512), epochs_curve=2)
    saved = json.loads((run / "ctr" / "compare.json").read_text())
    assert saved["oracle_auc"] == 0.9
    for s in ("id", "vector", "simscore", "simtier", "make", "simtier+make"):
        for k in ("auc", "gauc", "logloss"):
            assert set(saved[s][k]) == {"mean", "std"}
        assert len(saved[s]["groups"]) == 8 and set(saved[s]["groups"][0]) >= {"auc", "gauc"}
        assert set(saved[s]["new_items"]) >= {"auc", "gauc"} and saved[s]["new_items"]["n"] > 0
        assert (run / "ctr" / s / "model.safetensors").exists()
    assert [c["epochs"] for c in saved["make_epochs_curve"]] == [0, 1]
    # Figure 3: both models scored after each epoch; Figure 6b: LogLoss per group as well
    assert [c["epochs"] for c in saved["epochs_curve"]] == [1, 2]
    assert all(0.5 < c["id_auc"] < 1 and 0.4 < c["multimodal_auc"] < 1 for c in saved["epochs_curve"])
    assert saved["id"]["groups"][0]["logloss"] > 0
    assert len(saved["simtier"]["relative"]["groups_logloss"]) == 8
    assert (run / "report" / "plots" / "ctr_epochs.png").exists()
    assert "Figure 3" in (run / "ctr" / "compare.md").read_text()
    assert (run / "report" / "plots" / "ctr_strategies.png").exists()
    assert res["id"]["relative"]["gauc"] == 0.0

    # train through the CLI, then score a file through the CLI
    r = CliRunner().invoke(app, ["ctr", "train", "--run", str(run), "--strategy", "simtier",
                                 "--make-epochs", "0"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "ctr" / "simtier" / "metrics.json").read_text())
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["strategy"] == "simtier"
    out = tmp_path / "scores.parquet"
    r = CliRunner().invoke(app, ["ctr", "predict", "--run", str(run), "--strategy", "simtier",
                                 "--samples", str(run / "data" / "ctr_samples.parquet"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    scores = pq.read_table(out)
    assert scores.column_names == ["request_id", "item_id", "position", "score"]
    assert scores.num_rows == 6000
    # the reloaded model scores the test split exactly as the trained one did
    from mmrank.ctr.evaluate import evaluate
    from mmrank.ctr.rundata import load_run

    data = load_run(run)
    te = data.enc.test_rows()
    s = scores.column("score").to_numpy()[te]
    assert abs(evaluate(data, s)["auc"] - metrics["auc"]) < 1e-9
    r = CliRunner().invoke(app, ["ctr", "train", "--run", str(run), "--strategy", "nope"])
    assert r.exit_code != 0
    # the MAKE curve and Figure 3 load the representations even when only the ID model is compared
    only_id = compare(run, seeds=1, strategies=("id",), make_epochs=1, curve=(0,), cfg=SMALL,
                      progress=False, train_cfg=TrainConfig(batch_size=512), epochs_curve=1, plots=False)
    assert [c["epochs"] for c in only_id["make_epochs_curve"]] == [0]
    assert [c["epochs"] for c in only_id["epochs_curve"]] == [1]


@pytest.mark.parametrize("mode", ["freeze", "finetune"])
def test_pretrained_make_is_frozen_or_finetuned_with_the_id_model(tmp_path, mode):
    import copy

    from mmrank.ctr.rundata import fit_strategy, load_run, new_make

    data = load_run(_make_run(tmp_path, n_rows=3000))
    cfg = CtrConfig.model_validate({**SMALL.model_dump(), "history_len": 20,
                                    "make": {**SMALL.make.model_dump(), "after_pretrain": mode}})
    make = new_make(data, cfg, seed=0)
    tc = TrainConfig(batch_size=256)
    pretrain_make(make, data.enc, data.train_rows(), epochs=1, cfg=tc, progress=False)
    before = copy.deepcopy(make.state_dict())
    model, _ = fit_strategy(data, "make", make_epochs=1, make=make, cfg=cfg, train_cfg=tc, progress=False)
    after = model.make.state_dict()
    moved = any(not torch.equal(before[k], after[k]) for k in before)
    assert model.freeze_make == (mode == "freeze")
    assert moved == (mode == "finetune")


@pytest.mark.parametrize("history_len", [20, 5])
def test_simtier_pipeline_counts_equal_the_models(planted, history_len):
    """SimTier precomputed in the data pipeline == computed in the forward pass (same truncation to
    the last history_len clicks), and the model gives the same logits either way."""
    from mmrank.ctr.data import make_batch, simtier_features

    data, enc, sizes, vecs = planted
    counts = simtier_features(enc, vecs, n_tiers=10, history_len=history_len, chunk=1000)  # several chunks
    rows = np.arange(0, len(enc), 7)
    batch = make_batch(enc, rows, history_len)
    table = ItemVectors(vecs)
    from mmrank.models.layers import SimTier

    dense = SimTier(10)(table(batch["item_v"]), table(batch["hist_item_v"]), batch["mask"])
    np.testing.assert_array_equal(counts[rows], dense.numpy())
    assert counts[rows].sum(1).tolist() == batch["mask"].sum(1).tolist()
    cfg = CtrConfig.model_validate({**_cfg("simtier").model_dump(), "history_len": history_len,
                                    "simtier_in": "pipeline"})
    torch.manual_seed(0)
    model = CtrModel(cfg, sizes, vecs).eval()
    with torch.no_grad():
        in_model = model(batch)["logit"]
        batch["simtier"] = torch.from_numpy(counts[rows])
        piped = model(batch)["logit"]
    torch.testing.assert_close(piped, in_model)


def test_compare_add_keeps_the_earlier_rows_and_refuses_another_setup(tmp_path):
    """`ctr compare --add`: a new strategy's rows join the earlier comparison (its rows unchanged, the new
    row's change computed against the kept `id`); a comparison made with other seeds is refused, and
    without --add the comparison is replaced."""
    from mmrank.ctr.stage import compare

    run = _make_run(tmp_path, n_rows=3000)
    kw = dict(make_epochs=0, curve=(), cfg=SMALL, progress=False, train_cfg=TrainConfig(batch_size=512),
              plots=False)
    first = compare(run, seeds=1, strategies=("id", "simtier"), **kw)
    added = compare(run, seeds=1, strategies=("vector",), add=True, **kw)
    saved = json.loads((run / "ctr" / "compare.json").read_text())
    assert [k for k in saved if k in ("id", "simtier", "vector")] == ["id", "simtier", "vector"]
    assert saved["kept"] == ["id", "simtier"]
    assert saved["id"]["gauc"] == first["id"]["gauc"] and saved["simtier"]["auc"] == first["simtier"]["auc"]
    assert added["vector"]["relative"]["gauc"] == pytest.approx(
        added["vector"]["gauc"]["mean"] / first["id"]["gauc"]["mean"] - 1)
    assert "| vector |" in (run / "ctr" / "compare.md").read_text()
    with pytest.raises(ConfigError, match="seeds"):
        compare(run, seeds=2, strategies=("simscore",), add=True, **kw)
    compare(run, seeds=1, strategies=("vector",), **kw)              # no --add: replaced
    assert "id" not in json.loads((run / "ctr" / "compare.json").read_text())

"""Re-rankers: two-stage behaviour filtering, set scoring, every configuration trains, learning of what
only the multimodal features show."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrank.errors import ConfigError
from mmrank.eval import auc
from mmrank.rerank.models import MODELS, model_config
from mmrank.rerank.trainer import RerankTrainConfig, batch_for, build_model, fit, load_data, predict
from mmrank.store.tiny_encoder import TinyItemEncoder
from mmrank.testing.lists import write_tiny_lists

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    run = write_tiny_lists(tmp_path_factory.mktemp("lists"), n_requests=160, seed=4)
    return load_data(run, encoder=TinyItemEncoder(dim=8))


def _small(name: str, **kw):
    return model_config(name, emb_dim=4, mm_dim=8, hidden=16, att_hidden=[8], head_hidden=[8, 4], list_ff=16, **kw)


def test_history_is_filtered_to_the_candidates_category(data):
    """A candidate's scores read only the user's clicks in its own category (two-stage modelling)."""
    torch.manual_seed(0)
    model = build_model(data, _small("armmt-no-mpsa")).eval()   # pointwise: no other candidate mixes in
    rows = np.array([r for r in range(len(data.lists)) if np.diff(data.lists.hist_offsets)[r] >= 2][:8])
    b = batch_for(data, rows, "all")
    k = 0
    cat0 = b["hist_category"][k, 0].item()
    other = b["category"][k] != cat0
    same = (b["category"][k] == cat0) & ~b["pad"][k]
    assert other.any() and same.any()
    with torch.no_grad():
        base = model(b)
        b2 = dict(b)
        b2["hist_item"] = b["hist_item"].clone()
        b2["hist_item_v"] = b["hist_item_v"].clone()
        b2["hist_item"][k, 0] = 1 + (b["hist_item"][k, 0] % 5) + 3
        b2["hist_item_v"][k, 0] = 2 + (b["hist_item_v"][k, 0] + 7) % (data.feats.tables["image"].shape[0] - 2)
        changed = model(b2)
    for t in base:
        torch.testing.assert_close(changed[t][k][other], base[t][k][other], rtol=0, atol=0)
        assert not torch.allclose(changed[t][k][same], base[t][k][same])
        torch.testing.assert_close(changed[t][1:], base[t][1:], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["armmt", "prm", "seqmd"])
def test_lists_are_scored_as_sets(data, name):
    """Permuting a list's candidates permutes its scores: no model reads the logged order."""
    torch.manual_seed(0)
    model = build_model(data, _small(name)).eval()
    rows = np.array([3, 9])
    cands = [np.arange(data.lists.offsets[r], data.lists.offsets[r + 1]) for r in rows]
    perm = [np.random.default_rng(1).permutation(len(c)) for c in cands]
    with torch.no_grad():
        a = model(batch_for(data, rows, cand=cands))
        b = model(batch_for(data, rows, cand=[c[p] for c, p in zip(cands, perm)]))
    for t in a:
        for k, p in enumerate(perm):
            torch.testing.assert_close(b[t][k, :len(p)], a[t][k, torch.as_tensor(p)], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_with_one_named_term_per_label(data, name):
    cfg = _small(name)
    model, info = fit(data, name, cfg=cfg, train_cfg=RerankTrainConfig(epochs=1, batch_size=32), progress=False)
    assert set(info["loss"][0]) == ({"ips_listwise", "total"} if cfg.objective == "ips-listwise"
                                    else {*cfg.loss_weights, "total"})
    assert all(np.isfinite(v) for v in info["loss"][0].values())
    cands, scores = predict(model, data, data.lists.test_rows()[:5], "all")
    assert [len(s) for s in scores["rank"]] == [len(c) for c in cands]
    assert set(scores) == {*cfg.tasks, "rank"}


def test_configuration_errors_name_the_problem(data):
    with pytest.raises(ConfigError, match="--model"):
        model_config("nope")
    with pytest.raises(ConfigError, match="loss term 'cart' has no head"):
        build_model(data, _small("armmt", loss_weights={"cart": 1.0}))


def test_armmt_learns_the_query_match_that_ids_cannot_see(tmp_path):
    """Clicks planted on the query's colour matching the candidate's photo/title; the production score
    knows nothing of it. ARMMT (representations of query and candidates) beats the pointwise ID DNN."""
    run = write_tiny_lists(tmp_path, n_requests=2000, n_users=200, prod_match=0.0, seed=1)
    d = load_data(run, encoder=TinyItemEncoder(dim=16))
    te = d.lists.test_rows()
    res = {}
    for name in ("dnn", "armmt"):
        model, _ = fit(d, name, train_cfg=RerankTrainConfig(epochs=6, batch_size=32), progress=False)
        cands, scores = predict(model, d, te, "shown")
        idx = np.concatenate(cands)
        res[name] = auc(d.lists.click[idx].astype(int), np.concatenate(scores["click"]))
    assert res["armmt"] > res["dnn"] + 0.02, res


def test_ips_listwise_loss_weights_each_shown_gain_by_its_exposure(data):
    """The counterfactual loss is -1/B sum w log softmax over every candidate, w = gain / exposure, the
    exposure (deterministic logs) the click model's examination at the logged position, 0 unshown."""
    from mmrank.rerank.offpolicy import fit_click_models
    from mmrank.rerank.trainer import MIN_EXPOSURE, ips_listwise_loss

    lists = data.lists
    theta = fit_click_models(lists, lists.train_rows())["click"].theta
    shown = lists.position >= 0
    np.testing.assert_allclose(data.exposure()[shown], theta[lists.position[shown]], rtol=1e-6)
    assert (data.exposure()[~shown] == 0).all()
    torch.manual_seed(0)
    model = build_model(data, _small("dnn-ips")).eval()
    rows = lists.train_rows()[:6]
    got = ips_listwise_loss(model, data, rows)["total"]
    with torch.no_grad():
        s = model.rank_scores(model(batch_for(data, rows, "all")))
    want = 0.0
    for k, r in enumerate(rows):
        idx = np.arange(lists.offsets[r], lists.offsets[r + 1])
        gain = np.maximum.reduce([1.0 * lists.click[idx], 2.0 * lists.cart[idx], 4.0 * lists.purchase[idx]])
        w = np.where(shown[idx], gain / np.maximum(data.exposure()[idx], MIN_EXPOSURE), 0.0)
        want -= float((torch.from_numpy(w).float() * torch.log_softmax(s[k, :len(idx)], 0)).sum())
    assert want != 0.0
    assert float(got.detach()) == pytest.approx(want / len(rows), rel=1e-5)

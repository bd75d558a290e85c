"""Semantic IDs (issue 25): residual k-means codes, the collision rule, `mmrank sid build`, and the
sid CTR strategies through `ctr compare`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from mmrank.sid.build import assign, disambiguate, level_stats, residual_kmeans
from mmrank.testing.ctr import synthetic_run

torch.set_num_threads(1)


def _mixture(n_per: int = 150, k: int = 8, dim: int = 16, spread: float = 0.5, seed: int = 0,
             noise_seed: int | None = None):
    """``k`` orthonormal centres (from ``seed``), ``n_per`` points each with Gaussian noise of norm about
    ``spread`` (from ``noise_seed``, default ``seed``); (points, labels)."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k]       # orthonormal: 1.41 apart
    labels = np.repeat(np.arange(k), n_per)
    noise = np.random.default_rng(seed if noise_seed is None else noise_seed).normal(size=(len(labels), dim))
    x = centres[labels] + spread * noise / np.sqrt(dim)
    return x.astype(np.float32), labels


def _purity(codes: np.ndarray, labels: np.ndarray) -> float:
    return sum(np.bincount(labels[codes == c]).max() for c in np.unique(codes)) / len(labels)


def test_level_one_codes_recover_the_mixture_clusters_and_later_levels_refine():
    x, labels = _mixture()
    books, codes, stats = residual_kmeans(x, levels=3, codes=8, seed=0)
    assert books.shape == (3, 8, 16) and codes.shape == (len(x), 3)
    assert adjusted_rand_score(labels, codes[:, 0]) > 0.9
    assert _purity(codes[:, 0], labels) > 0.9
    # each level lowers the reconstruction error; usage and perplexity as level_stats defines them
    mse = [s["rel_mse"] for s in stats]
    assert mse[0] > mse[1] > mse[2] > 0
    assert stats[0]["used"] == 8 and 7.0 < stats[0]["perplexity"] <= 8.0
    # new points of the same mixture get their cluster's level-1 code from the codebooks alone
    fresh, new_labels = _mixture(n_per=20, seed=0, noise_seed=7)   # same centres, fresh noise
    code_of_cluster = {c: np.bincount(codes[labels == c, 0]).argmax() for c in range(8)}
    got = assign(books, fresh)[:, 0]
    assert (got == np.array([code_of_cluster[c] for c in new_labels])).mean() > 0.95


def test_assign_is_the_rule_the_catalog_codes_follow_and_training_is_deterministic():
    x, _ = _mixture(n_per=60, k=5, seed=3)
    books, codes, stats = residual_kmeans(x, levels=2, codes=6, seed=4)
    np.testing.assert_array_equal(assign(books, x), codes)
    books2, codes2, _ = residual_kmeans(x, levels=2, codes=6, seed=4)
    np.testing.assert_array_equal(books, books2)
    np.testing.assert_array_equal(codes, codes2)
    assert level_stats(x, books, codes) == stats


def test_collision_rule_gives_every_item_a_unique_code():
    # hand-worked: ids 5 and 3 share (1, 2) -> 3 gets token 0, 5 token 1; 9 is alone
    tok = disambiguate(np.array([5, 9, 3]), np.array([[1, 2], [0, 0], [1, 2]]))
    assert tok.tolist() == [1, 0, 0]
    # duplicated vectors collide on their full code; (codes, token) is then unique
    x, _ = _mixture(n_per=30, k=4, seed=2)
    x = np.concatenate([x, x[:40], x[:10]])
    ids = np.random.default_rng(0).permutation(len(x)).astype(np.int64) + 100
    _, codes, _ = residual_kmeans(x, levels=2, codes=4, seed=0)
    tok = disambiguate(ids, codes)
    full = np.concatenate([codes, tok[:, None]], axis=1)
    assert len(np.unique(codes, axis=0)) < len(x) and tok.max() >= 2
    assert len(np.unique(full, axis=0)) == len(x)


def test_bad_input_is_refused_with_a_clear_error():
    from mmrank.errors import ConfigError, DataError

    x, _ = _mixture(n_per=2, k=2)
    with pytest.raises(ConfigError, match="--codes"):
        residual_kmeans(x, levels=1, codes=8)
    x[1, 3] = np.nan
    with pytest.raises(DataError, match="row 1"):
        residual_kmeans(x, levels=1, codes=2)
    with pytest.raises(DataError, match=r"\(N, 16\)"):
        assign(np.zeros((2, 4, 16), np.float32), np.zeros((3, 8), np.float32))


def _run(tmp_path, n_rows: int = 4000):
    """A run of synthetic CTR samples (mmrank.testing.ctr) with its embedding table."""
    return synthetic_run(tmp_path / "run", n_rows=n_rows, n_users=150)


def test_sid_build_writes_codes_beside_the_table_stamped_with_the_encoder_version(tmp_path):
    from mmrank import lineage
    from mmrank.cli import app
    from mmrank.sid.stage import load_sid, sid_dir

    run = _run(tmp_path, n_rows=500)
    r = CliRunner().invoke(app, ["sid", "build", "--run", str(run), "--levels", "2", "--codes", "16"])
    assert r.exit_code == 0, r.output
    assert "perplexity" in r.output and "relative MSE" in r.output
    d = sid_dir(run, "test-v1")
    assert d == run / "embeddings" / "v-test-v1" / "sid"
    meta = json.loads((d / "meta.json").read_text())
    assert meta["encoder_version"] == "test-v1" and meta["levels"] == 2 and meta["codes"] == 16
    assert [s["level"] for s in meta["levels_stats"]] == [1, 2]
    rec = lineage.read(d)
    assert rec["inputs"]["encoder"] == "test-v1" and rec["digest"] == meta["sid_version"]
    # point in time: made from item content only, no behaviour table among its inputs
    assert not any(k.startswith("data/ctr") for k in rec["inputs"])
    sid = load_sid(run, "test-v1")
    t = pq.read_table(d / "codes.parquet")
    assert t.column_names == ["item_id", "codes", "token"] and t.num_rows == 200
    assert len(np.unique(np.c_[sid.codes, sid.token], axis=0)) == 200
    # a second build gives the same codebooks (seeded, one faiss thread)
    CliRunner().invoke(app, ["sid", "build", "--run", str(run), "--levels", "2", "--codes", "16"])
    assert json.loads((d / "meta.json").read_text())["sid_version"] == meta["sid_version"]
    r = CliRunner().invoke(app, ["sid", "build", "--run", str(run), "--codes", "1"])
    assert r.exit_code != 0


@pytest.mark.slow
def test_ctr_compare_with_sid_strategies_builds_codes_on_demand_and_writes_rows(tmp_path):
    from mmrank.cli import app
    from mmrank.ctr.artifacts import load_model
    from mmrank.ctr.data import load_samples
    from mmrank.ctr.trainer import predict
    from mmrank.sid.stage import sid_dir

    run = _run(tmp_path)
    cfg = tmp_path / "small.yaml"
    cfg.write_text("ctr:\n  model:\n    emb_dim: 8\n    att_hidden: [16, 8]\n    mlp_hidden: [32, 16]\n"
                   "    n_tiers: 10\n    history_len: 20\n    make: {proj_dim: 8, att_hidden: [16, 8], "
                   "mlp_hidden: [32, 16, 8]}\n  train: {batch_size: 512}\n")
    assert not sid_dir(run, "test-v1").exists()
    r = CliRunner().invoke(app, ["ctr", "compare", "--run", str(run), "--seeds", "1", "--make-epochs", "1",
                                 "--curve", "", "--strategies", "id,sid,simtier+make,sid+simtier+make",
                                 "--threads", "1", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert (sid_dir(run, "test-v1") / "codes.parquet").exists()              # built on demand
    saved = json.loads((run / "ctr" / "compare.json").read_text())
    for s in ("sid", "sid+simtier+make"):
        assert 0.5 < saved[s]["auc"]["mean"] < 1.0
        assert len(saved[s]["groups"]) == 8 and saved[s]["new_items"]["n"] > 0
        assert "gauc" in saved[s]["relative"]
        assert f"| {s} |" in (run / "ctr" / "compare.md").read_text()
    sid_version = json.loads((sid_dir(run, "test-v1") / "meta.json").read_text())["sid_version"]
    assert json.loads((run / "ctr" / "sid" / "config.json").read_text())["sid"] == sid_version
    # the saved model reloads with its codes re-attached and scores as it did when trained
    model, space, _ = load_model(run, "sid")
    enc = space.encode(load_samples(run / "data" / "ctr_samples.parquet"))
    probs = predict(model, enc)
    assert np.isfinite(probs).all() and len(probs) == len(enc.test_rows())
    metrics = json.loads((run / "ctr" / "sid" / "metrics.json").read_text())
    from mmrank.eval import auc

    assert auc(enc.raw.label[enc.test_rows()].astype(int), probs) == pytest.approx(metrics["auc"], abs=1e-6)

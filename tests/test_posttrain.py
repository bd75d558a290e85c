"""Post-training (issue 21, part 3): pairs, adapter, loss, point-in-time correctness, the CTR strategies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mmrank.posttrain.config import PosttrainConfig
from mmrank.posttrain.stage import cutoff_ts, run_posttrain
from mmrank.posttrain.train import InfoNCELoss, ResidualAdapter, behaviour_pairs, to_rows
from mmrank.store.backends import create_table, open_table
from mmrank.testing.markets import micro_market

FAST = PosttrainConfig(epochs=1, batch_size=256, hidden=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Small matrices: one torch thread is faster than two fighting over a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A micro market with a frozen 16-d embedding table (seeded random vectors) as R/embeddings."""
    run = micro_market(tmp_path_factory.mktemp("posttrain") / "run", seed=2)
    ids = np.sort(pq.read_table(run / "data" / "items.parquet", columns=["item_id"]).column("item_id").to_numpy())
    vecs = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    t = create_table(run / "embeddings", version="rand-v1", dim=16)
    t.put(ids, vecs, version="rand-v1")
    t.publish()
    t.close()
    return run


@pytest.fixture
def run(base_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def _table(run):
    t = open_table(run / "posttrain")
    try:
        ids = t.ids()
        return t.version, ids, t.get(ids)
    finally:
        t.close()


def _rewrite_events(run, fn):
    path = run / "data" / "events.parquet"
    pq.write_table(fn(pq.read_table(path)), path)


def test_pairs_follow_sessions_and_never_pair_an_item_with_itself():
    # user 1: clicks at 0, 60, 120 (one session), then 5000 (a new one); user 2: 10, 20
    user = np.array([1, 1, 1, 1, 2, 2])
    item = np.array([10, 11, 11, 12, 20, 21])
    ts = np.array([0, 60, 120, 5000, 10, 20])
    p = behaviour_pairs(user, item, ts, PosttrainConfig(session_gap_s=1800, session_window=2, recent_clicks=2))
    a, b, _ = p["session"]
    assert sorted(zip(a.tolist(), b.tolist())) == [(10, 11), (10, 11), (20, 21)]  # no (11, 11), no 11->12
    recent, target, _ = p["next"]
    got = {(tuple(r), t) for r, t in zip(recent.tolist(), target.tolist())}
    # next clicks span sessions; the target itself never sits in its own history
    assert got == {((10, -1), 11), ((-1, 10), 11), ((11, 11), 12), ((20, -1), 21)}
    rows = to_rows(p, np.array([10, 11, 20, 21]))              # item 12 has no representation
    assert len(rows["session"][1]) == 3 and 12 not in rows["next"][1]


def test_adapter_starts_at_the_identity_and_infonce_masks_duplicate_items():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    assert torch.equal(ResidualAdapter(8, 4)(v), torch.nn.functional.normalize(v, dim=-1))
    loss = InfoNCELoss(temperature=0.1)
    q, k = v[[0, 1, 2]], v[[3, 3, 4]]                           # rows 0 and 1 share their positive
    masked = loss(q, k, k_ids=torch.tensor([3, 3, 4]))["loss"]
    unmasked = loss(q, k)["loss"]
    assert masked < unmasked                                    # the duplicate is no negative
    assert loss.log_scale.requires_grad


def test_point_in_time_test_period_events_cannot_change_the_table(base_run, tmp_path):
    runs = {}
    for name in ("base", "test_changed", "test_removed", "train_changed"):
        runs[name] = tmp_path / name
        shutil.copytree(base_run, runs[name])
    cut = cutoff_ts(base_run)
    events = pq.read_table(base_run / "data" / "events.parquet")
    ts = events.column("ts").to_numpy()
    click = pc.equal(events.column("event"), "click").to_numpy(zero_copy_only=False)
    assert (click & (ts >= cut)).sum() > 50 and (click & (ts < cut)).sum() > 50

    def other_item(t, where):
        items = t.column("item_id").to_numpy().copy()
        items[where] = np.roll(items[where], 1) if where.sum() > 1 else items[where] + 1
        return t.set_column(t.schema.get_field_index("item_id"), "item_id", pa.array(items))

    _rewrite_events(runs["test_changed"], lambda t: other_item(t, click & (ts >= cut)))
    _rewrite_events(runs["test_removed"], lambda t: t.filter(pa.array(ts < cut)))
    first_train_click = np.flatnonzero(click & (ts < cut))[-1]
    only = np.zeros(len(ts), bool)
    only[first_train_click] = True
    _rewrite_events(runs["train_changed"], lambda t: other_item(t, only))

    out = {name: (run_posttrain(r, FAST, progress=False), _table(r)) for name, r in runs.items()}
    base_version, base_ids, base_vecs = out["base"][1]
    for name in ("test_changed", "test_removed"):
        version, ids, vecs = out[name][1]
        assert version == base_version and np.array_equal(ids, base_ids)
        assert vecs.tobytes() == base_vecs.tobytes(), name     # bit-identical
    version, ids, vecs = out["train_changed"][1]
    assert version != base_version and np.array_equal(ids, base_ids)
    assert not np.array_equal(vecs, base_vecs)
    summary = out["base"][0]
    assert summary["cutoff_ts"] == cut == json.loads((base_run / "data" / "manifest.json").read_text())["split_ts"]
    lin = json.loads((runs["base"] / "posttrain" / "lineage.json").read_text())
    assert lin["inputs"]["representations"] == "embeddings:rand-v1" and lin["digest"] == base_version


def test_loss_falls_on_co_click_pairs_and_every_item_keeps_a_representation(run):
    s = run_posttrain(run, PosttrainConfig(objective="session", epochs=3, batch_size=128, hidden=32,
                                                      lr=1e-2),
                      progress=False)
    assert set(s["pairs"]) == {"session"} and s["pairs"]["session"] > 100
    losses = [e["session"] for e in s["epochs"]]
    assert losses[-1] < losses[0] and s["after"]["session"] < 0.9 * s["before"]["session"], s
    _, ids, vecs = _table(run)
    items = pq.read_table(run / "data" / "items.parquet", columns=["item_id"]).column("item_id").to_numpy()
    assert np.array_equal(ids, np.sort(items))                  # never-clicked items too (content only)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    both = run_posttrain(run, FAST, progress=False)
    assert set(both["epochs"][0]) >= {"session", "next"}        # both losses logged by name


def test_ctr_compare_runs_the_post_strategies_and_posttrains_on_demand(run, tmp_path):
    from mmrank.cli import app

    assert not (run / "posttrain").exists()
    r = CliRunner().invoke(app, ["ctr", "compare", "--run", str(run), "--seeds", "1", "--strategies",
                                 "id,simtier,post,post+simtier+make", "--make-epochs", "1", "--curve", "",
                                 "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert (run / "posttrain" / "CURRENT").exists()
    res = json.loads((run / "ctr" / "compare.json").read_text())
    for s in ("id", "simtier", "post", "post+simtier+make"):
        assert 0.0 < res[s]["auc"]["mean"] < 1.0 and "gauc" in res[s]["relative"]
        assert f"| {s} |" in (run / "ctr" / "compare.md").read_text()
    assert res["posttrain"].startswith("posttrain:post-") and res["representations"] == "embeddings:rand-v1"
    conf = json.loads((run / "ctr" / "post" / "config.json").read_text())
    assert conf["representations"] == res["posttrain"] and conf["model"]["strategy"] == "post"
    # the saved post model reloads on the post-trained table and scores a file
    out = tmp_path / "scores.parquet"
    r = CliRunner().invoke(app, ["ctr", "predict", "--run", str(run), "--strategy", "post", "--samples",
                                 str(run / "data" / "ctr_samples.parquet"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert pq.read_table(out).num_rows == pq.read_metadata(run / "data" / "ctr_samples.parquet").num_rows
    # a post-trained table made from other clicks is refused by name, not used
    lin = run / "posttrain" / "lineage.json"
    rec = json.loads(lin.read_text())
    rec["inputs"]["clicks"] = "0" * 16
    lin.write_text(json.dumps(rec))
    r = CliRunner().invoke(app, ["ctr", "predict", "--run", str(run), "--strategy", "post", "--samples",
                                 str(run / "data" / "ctr_samples.parquet"), "--out", str(out)])
    assert r.exit_code != 0 and "posttrain" in str(r.exception)


def test_bad_input_is_a_one_line_error_naming_what_is_missing(run, tmp_path):
    from mmrank.cli import app
    from mmrank.errors import MMRankError

    r = CliRunner().invoke(app, ["posttrain", "--run", str(run), "--objective", "nope"])
    assert isinstance(r.exception, MMRankError) and "objective" in str(r.exception)
    shutil.rmtree(run / "embeddings")
    r = CliRunner().invoke(app, ["posttrain", "--run", str(run)])
    assert isinstance(r.exception, MMRankError) and "mmrank pretrain" in str(r.exception)
    empty = tmp_path / "empty"
    (empty / "data").mkdir(parents=True)
    r = CliRunner().invoke(app, ["posttrain", "--run", str(empty)])
    assert isinstance(r.exception, MMRankError) and "ctr_samples.parquet" in str(r.exception)

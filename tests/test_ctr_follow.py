"""The near-line CTR trainer (`mmrank ctr follow`, issue 31): dynamic ID rows, representations as of each
sample's time, exactly-once resume from checkpoints, published bundles that serving loads, and no
read of R/truth/."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmrank.ctr.dynamic_ids import UNKNOWN_ROW, DynamicIdTable
from mmrank.ctr.follow import FollowConfig, Follower, ReplaySamples, StrategyState
from mmrank.errors import ConfigError
from mmrank.testing.audit import opens_under


@pytest.fixture(scope="module")
def follow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro market with the small encoder and its embedding table (no CTR model)."""
    from mmrank.testing.markets import micro_market
    from mmrank.testing.serving import new_encoder
    from mmrank.threads import limited

    run = tmp_path_factory.mktemp("follow") / "run"
    with limited(1):
        micro_market(run, seed=5)
        new_encoder(run, seed=0)
    return run


def _cfg(**kw) -> FollowConfig:
    base = dict(strategies=["simtier"], batch_size=256, publish_every=86_400, item_capacity=2000,
                user_capacity=2000, admit_after=2, expire_after=None, checkpoint_every=5)
    return FollowConfig(**{**base, **kw})


# -------------------------------------------------------------------------------------- the ID table

def test_id_table_admits_after_n_sightings_expires_and_evicts_lru() -> None:
    t = DynamicIdTable(capacity=2, admit_after=3, expire_after=100)
    first = t.observe(np.array([5, 5]), np.array([0, 1]))
    assert first.rows.tolist() == [UNKNOWN_ROW, UNKNOWN_ROW] and len(t) == 0      # 2 sightings: not yet
    third = t.observe(np.array([5, 5]), np.array([2, 3]))
    assert third.rows[0] >= 2 and third.rows[0] == third.rows[1]                 # the 3rd sighting admits
    assert third.assigned.tolist() == [third.rows[0]]
    row5 = int(third.rows[0])
    assert t.lookup(np.array([5, 6])).tolist() == [row5, UNKNOWN_ROW]          # lookup does not count

    t2 = DynamicIdTable(capacity=2, admit_after=1)
    t2.observe(np.array([1]), np.array([10]))
    t2.observe(np.array([2]), np.array([20]))
    t2.observe(np.array([1]), np.array([30]))                                     # 2 is now least recent
    out = t2.observe(np.array([3]), np.array([40]))                               # the bound: evict 2
    assert out.evicted == 1 and 2 not in t2 and 1 in t2 and 3 in t2 and len(t2) == 2
    assert out.rows[0] == out.assigned[0]

    freed = t.expire(now=3 + 100 + 1)                                              # unseen for > 100 s
    assert freed.tolist() == [row5] and 5 not in t
    assert t.lookup(np.array([5])).tolist() == [UNKNOWN_ROW]
    with pytest.raises(ConfigError):
        DynamicIdTable(capacity=0)


def test_id_table_state_round_trips_through_arrays() -> None:
    t = DynamicIdTable(capacity=3, admit_after=2, expire_after=50)
    t.observe(np.array([1, 1, 2, 3, 3, 4]), np.array([1, 2, 3, 4, 5, 6]))
    back = DynamicIdTable.from_arrays(t.config(), t.to_arrays("x"), "x")
    assert back.row_of == t.row_of and back.pending == t.pending
    assert np.array_equal(back.last_seen, t.last_seen)
    # the pending count survives: one more sighting of 2 admits it in both
    assert t.observe(np.array([2]), np.array([7])).rows.tolist() == \
        back.observe(np.array([2]), np.array([7])).rows.tolist()


# ----------------------------------------------------------------------- a new item in the stream

def _trace(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    seen: list[dict] = []
    orig = StrategyState.encode_train

    def spy(self, s):  # noqa: ANN001
        enc = orig(self, s)
        vec = self.reps.table[torch.from_numpy(enc.item_v.astype(np.int64))].abs().sum(1).numpy()
        seen.append({"item_id": s.item_id.copy(), "ts": s.ts.copy(), "row": enc.item.copy(),
                     "item_v": enc.item_v.copy(), "vec_norm": vec})
        return enc

    monkeypatch.setattr(StrategyState, "encode_train", spy)
    return seen


def _new_item(run: Path, min_count: int) -> tuple[int, int]:
    from mmrank.data.io import read_table

    src = ReplaySamples(run).all
    t = read_table(run / "data" / "items.parquet", "items", columns=["item_id", "created_at"])
    created = dict(zip(t.column("item_id").to_pylist(), t.column("created_at").to_pylist()))
    ids, counts = np.unique(src.item_id, return_counts=True)
    for i, c in sorted(zip(ids.tolist(), counts.tolist()), key=lambda x: -x[1]):
        if c >= min_count and created[i] > src.ts.min():
            return i, created[i]
    pytest.skip("no item arrives mid-stream in this market")


@pytest.mark.parametrize("latency", [0.0, 2 * 86_400.0])
def test_new_item_gets_its_row_after_admission_and_its_representation_from_arrival(
        follow_run: Path, monkeypatch: pytest.MonkeyPatch, latency: float) -> None:
    item, created = _new_item(follow_run, min_count=6)
    seen = _trace(monkeypatch)
    f = Follower(follow_run, _cfg(ingest_latency=latency), write=False)
    f.run_pass(progress=False)
    rows, ts, item_v, norms = [], [], [], []
    for b in seen:
        m = b["item_id"] == item
        rows += b["row"][m].tolist()
        ts += b["ts"][m].tolist()
        item_v += b["item_v"][m].tolist()
        norms += b["vec_norm"][m].tolist()
    assert len(rows) >= 6 and min(ts) >= created
    assert rows[0] == UNKNOWN_ROW                       # admit_after=2: the 1st sighting is unknown
    assert rows[1] >= 2 and len(set(rows[1:])) == 1     # its own row from the 2nd sighting on
    visible = np.array(ts) >= created + latency
    v, n = np.array(item_v), np.array(norms)
    assert (v[visible] >= 2).all() and (n[visible] > 0).all()    # its representation, not zero/unknown
    assert (v[~visible] == 1).all() and (n[~visible] == 0).all()  # and not before it is readable
    if latency == 0:
        assert visible.all()
    else:
        assert (~visible).any() and visible.any()
    # the same item in a history, as of the sample's time
    rep = f.reps
    assert rep.rows_as_of(np.array([item]), np.array([created + latency - 1]))[0] == 1
    assert rep.rows_as_of(np.array([item]), np.array([created + latency]))[0] >= 2


# ------------------------------------------------------------------------------ checkpoints and resume

def test_resume_after_a_crash_trains_every_sample_exactly_once(follow_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(follow_run, run)
    cfg = _cfg(strategies=["id", "simtier"], publish_every=3 * 86_400)
    whole = tmp_path / "whole"
    shutil.copytree(follow_run, whole)
    ref = Follower(whole, cfg)
    ref.run_pass(progress=False)

    crashed = Follower(run, cfg)
    crashed.run_pass(progress=False, stop_after=7)        # batches 6 and 7 trained, then lost
    assert (crashed.trained > 0).sum() > 0
    resumed = Follower(run, cfg)
    res = resumed.run_pass(progress=False)
    assert resumed.source.n_events == len(res.trained)
    assert res.trained.min() == 1 and res.trained.max() == 1       # every event once, none twice
    for s in cfg.strategies:                                        # the same model as without a crash
        a, b = resumed.states[s].model.state_dict(), ref.states[s].model.state_dict()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (s, k)
        assert np.allclose(res.probs[s], ref.probs[s], atol=1e-6, equal_nan=True)


# -------------------------------------------------------------------- the command, bundles and truth

def test_follow_command_publishes_bundles_serving_loads_and_never_opens_the_truth(
        follow_run: Path, tmp_path: Path) -> None:
    from mmrank.cli import app
    from mmrank.ctr.artifacts import load_model
    from mmrank.serve.bundle import load_bundle

    run = tmp_path / "run"
    shutil.copytree(follow_run, run)
    hidden = tmp_path / "hidden-truth"
    shutil.move(run / "truth", hidden)
    with opens_under(hidden) as opened:
        res = CliRunner().invoke(app, ["ctr", "follow", "--run", str(run), "--strategies", "id,simtier",
                                       "--publish-every", "86400", "--threads", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert opened == []
    for s in ("id", "simtier"):
        link = run / "ctr" / f"follow-{s}"
        assert link.is_symlink() and (link / "model.safetensors").exists()
        versions = sorted((run / "ctr" / "follow" / "bundles" / s).glob("v*"))
        assert 1 <= len(versions) <= FollowConfig().keep_bundles
        assert link.resolve() == versions[-1].resolve()
        model, space, conf = load_model(run, f"follow-{s}")
        assert conf["follow"]["version"] >= 2 and len(space.items) > 2
    bundle = load_bundle(run, "follow-simtier")
    try:
        assert bundle.strategy == "follow-simtier" and bundle.model.cfg.strategy == "simtier"
    finally:
        bundle.close()
    bad = CliRunner().invoke(app, ["ctr", "follow", "--run", str(run), "--source", "kafka"])
    assert isinstance(bad.exception, ConfigError) and "--source" in str(bad.exception)


def test_freshness_table_has_every_variant_and_renders_in_the_docs(follow_run: Path, tmp_path: Path) -> None:
    """The freshness protocol on a micro market: one row per representation delay (the ID model for
    "never"), per extra publish interval and the batch model; the near-line rows score every test
    impression; the docs page renders the JSON."""
    import json

    from mmrank.ctr.follow import freshness_table
    from mmrank.report.docs import Results, freshness_rows

    run = tmp_path / "run"
    shutil.copytree(follow_run, run)
    out = freshness_table(run, seeds=1, delays=(0, None), publish=(86_400, 604_800), base_publish=86_400,
                          progress=False)
    variants = [(r["group"], r["variant"]) for r in out["rows"]]
    assert [g for g, _ in variants] == ["representation delay", "representation delay", "publish interval",
                                        "batch"], variants
    saved = json.loads((run / "ctr" / "follow" / "freshness.json").read_text())
    n_test = saved["rows"][0]["all"]["n"]
    assert n_test > 0 and all(r["all"]["n"] == n_test for r in saved["rows"])
    for r in saved["rows"][:3]:                        # the near-line rows score every test impression
        assert 0.0 < r["all"]["auc"]["mean"] < 1.0
    root = tmp_path / "results"
    (root / "fresh" / "ctr" / "follow").mkdir(parents=True)
    shutil.copyfile(run / "ctr" / "follow" / "freshness.json", root / "fresh" / "ctr" / "follow" / "freshness.json")
    text = "\n".join(freshness_rows(Results(root), "fresh"))
    assert text.count("| representation delay |") == 4 and "| batch |" in text   # two tables, one row each
    assert f"{saved['rows'][0]['all']['auc']['mean']:.4f}" in text

"""`mmrank data import --preset`: each public format's tiny fixture imports, with what it lacks
counted and labelled, and the whole pipeline runs on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mmrank.data.importer import import_data
from mmrank.data.presets import PRESETS
from mmrank.testing.presets import TINY_CONFIG, preset_args, public_fixtures

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return public_fixtures(tmp_path_factory.mktemp("fixtures") / "fx")


def _table(run: Path, name: str):
    return pq.read_table(run / "data" / f"{name}.parquet")


def test_every_preset_has_a_fixture(fx: Path) -> None:
    assert set(preset_args(fx)) == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_fixture_imports(preset: str, fx: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    s = import_data(run, preset=preset, **preset_args(fx)[preset])
    items, events = _table(run, "items"), _table(run, "events")
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["imported"] and manifest["simulated"] is False and manifest["preset"]
    assert s["counts"]["items"] == items.num_rows > 0
    # every event names a known item; every click sits on an impression of the same slot
    assert np.isin(events.column("item_id").to_numpy(), items.column("item_id").to_numpy()).all()
    kind = events.column("event").to_pylist()
    slots = list(zip(events.column("request_id").to_pylist(), events.column("position").to_pylist()))
    shown = {sl for sl, k in zip(slots, kind) if k == "impression"}
    assert all(sl in shown for sl, k in zip(slots, kind) if k != "impression")
    samples = _table(run, "ctr_samples")
    assert samples.num_rows == s["counts"]["impressions"]
    split = samples.column("split").to_pylist()
    labels = samples.column("label").to_numpy()
    for side in ("train", "test"):
        rows = np.asarray([x == side for x in split])
        assert rows.any() and labels[rows].any(), f"{preset}: no clicks in {side}"
    assert _table(run, "pairs").num_rows > 0
    subs = manifest["substitutes"]
    assert "pairs" in subs  # none of these formats has search queries with purchases
    config = (run / "config.yaml").read_text()
    assert "data:" in config and f"split_ts: {s['split_ts']}" in config
    facts = {
        "taobao": lambda: (s["ignored"] == {"'fav' rows in UserBehavior.csv": 1}
                           and s["lists"]["implied_clicks"] == 4 and "impressions" in subs
                           and s["items_without"]["image"] == items.num_rows),
        "ali-ccp": lambda: (s["split_ts"] == 160 and s["counts"]["impressions"] == 220
                            and s["counts"]["users"] == 8 and "time" in subs),
        "alimama": lambda: (s["counts"]["impressions"] == 180 and s["counts"]["purchases"] == 0
                            and set(events.column("surface").to_pylist()) == {"display"}
                            and list(s["ignored"].values()) == [25]
                            and set(events.column("region").to_pylist()) <= {0, 1, 2, 3, 4}),
        "aliexpress": lambda: (set(events.column("region").to_pylist()) == {0, 1}
                               and s["counts"]["requests"] == 84 and s["split_ts"] > 0),
        "amazon": lambda: (s["events_naming_unknown_items"] == {str(preset_args(fx)["amazon"]["events"]): 1}
                           and s["items_without"]["image"] == 1 and s["items_without"]["price"] == 1
                           and "source_item_id" in items.column_names),
        "hm": lambda: (s["items_without"]["image"] == 1 and set(events.column("region").to_pylist()) == {0, 1}
                       and s["counts"]["purchases"] == s["counts"]["clicks"]
                       and "age" in _table(run, "users").column_names),
        "mmrec": lambda: (s["counts"]["items"] == 36 and "impressions" in subs
                          and (s["vectors"]["rows"], s["vectors"]["dim"]) == (36, 24)),
        "mmctr": lambda: (s["split_ts"] == 600 and s["counts"]["impressions"] == 780 and "time" in subs
                          and (s["vectors"]["rows"], s["vectors"]["dim"]) == (40, 128)),
    }
    assert facts[preset](), s


def test_sampled_negatives_are_point_in_time(fx: Path, tmp_path: Path) -> None:
    """A log without impressions: each sampled item existed at its list's time, is not the clicked
    item, and the slots of a list are distinct; item-to-item pairs look only backwards."""
    run = tmp_path / "run"
    import_data(run, preset="hm", **preset_args(fx)["hm"])
    items, events = _table(run, "items"), _table(run, "events")
    created = dict(zip(items.column("item_id").to_pylist(), items.column("created_at").to_pylist()))
    sampled = events.filter(events.column("sampled"))
    assert sampled.num_rows > 0
    for i, ts in zip(sampled.column("item_id").to_pylist(), sampled.column("ts").to_pylist()):
        assert created[i] <= ts
    imp = events.filter(pc.equal(events.column("event"), "impression"))
    key = list(zip(imp.column("request_id").to_pylist(), imp.column("position").to_pylist()))
    assert len(set(key)) == len(key)
    per_req: dict[int, list[int]] = {}
    for r, i in zip(imp.column("request_id").to_pylist(), imp.column("item_id").to_pylist()):
        per_req.setdefault(r, []).append(i)
    assert all(len(v) == len(set(v)) for v in per_req.values())
    # positions of the clicked item are spread over the slots (no position leaks the label)
    clicks = events.filter(pc.equal(events.column("event"), "click"))
    assert len(set(clicks.column("position").to_pylist())) == 5
    pairs = _table(run, "pairs")
    title_of = dict(zip(items.column("title").to_pylist(), items.column("item_id").to_pylist()))
    click_ts: dict[tuple[int, int], list[int]] = {}
    for u, i, t in zip(clicks.column("user_id").to_pylist(), clicks.column("item_id").to_pylist(),
                       clicks.column("ts").to_pylist()):
        click_ts.setdefault((u, i), []).append(t)
    for u, q, ts in zip(pairs.column("user_id").to_pylist(), pairs.column("query_text").to_pylist(),
                        pairs.column("ts").to_pylist()):
        assert min(click_ts[(u, title_of[q])]) <= ts  # the query item was clicked before (or with) it


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pipeline_runs_on_each_preset(preset: str, fx: Path, tmp_path: Path) -> None:
    """import -> pretrain -> embed -> ctr compare -> report, through the CLI, with tiny encoders.

    Re-ranking is not run: mmrank.rerank is built on another branch; the lists it reads are written
    (checked in test_preset_fixture_imports via the derived counts)."""
    from mmrank.cli import app

    run = tmp_path / "run"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_CONFIG)
    args = ["data", "import", "--run", str(run), "--preset", preset]
    for k, v in preset_args(fx)[preset].items():
        args += [f"--{k}", str(v)]
    runner = CliRunner()
    for cmd in (args, ["pretrain", "--run", str(run), "--config", str(cfg)],
                ["embed", "--run", str(run), "--config", str(cfg)],
                ["ctr", "compare", "--run", str(run), "--config", str(cfg)],
                ["report", "--run", str(run)]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0, (cmd, res.output, res.exception)
        subs = json.loads((run / "data" / "manifest.json").read_text())["substitutes"]
        # the stage says what the data lacks and what it does instead
        if cmd[0] == "pretrain":
            assert f"note: {subs['pairs']}" in res.output
        if cmd[0] == "ctr":
            assert ("note: the log has no impressions" in res.output) == ("impressions" in subs)
    metrics = json.loads((run / "encoder" / "metrics.json").read_text())
    assert metrics["acc@1"]["image"] is None and 0 <= metrics["acc@5"]["text"] <= 1  # i2i: text only
    comp = json.loads((run / "ctr" / "compare.json").read_text())
    for s in ("id", "simtier", "make"):
        assert 0 <= comp[s]["auc"]["mean"] <= 1
    md = (run / "report" / "results.md").read_text()
    assert "Imported data" in md and "not simulated" in md and "item-to-item" in md
    assert "| make |" in md and (run / "report" / "report.html").exists()
    recorded = (run / "config.yaml").read_text()
    for section in ("data:", "pretrain:", "embed:", "ctr:"):
        assert section in recorded


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["aliexpress", "taobao"])
def test_rerank_runs_on_imported_lists(preset: str, fx: Path, tmp_path: Path) -> None:
    """Re-ranking where the labels allow: search lists with clicks and purchases (AliExpress: real
    lists per search and country; Taobao: lists of sampled negatives). mmrank.rerank is built on
    another branch: on a build without it this test is skipped with that reason."""
    pytest.importorskip("mmrank.rerank.stage", reason="mmrank.rerank is not part of this build (branch rerank)")
    from mmrank.cli import app
    from mmrank.rerank.stage import train_model
    from mmrank.rerank.trainer import RerankTrainConfig

    run = tmp_path / "run"
    import_data(run, preset=preset, **preset_args(fx)[preset])
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_CONFIG)
    for cmd in (["pretrain", "--run", str(run), "--config", str(cfg)],
                ["embed", "--run", str(run), "--config", str(cfg)]):
        res = CliRunner().invoke(app, cmd)
        assert res.exit_code == 0, (cmd, res.output, res.exception)
    lists = _table(run, "lists")
    assert lists.num_rows > 0 and set(lists.column("split").to_pylist()) == {"train", "test"}
    m = train_model(run, "dnn", train_cfg=RerankTrainConfig(epochs=1, batch_size=8), progress=False)
    assert m["test_requests"] > 0 and m["evaluator"].startswith("absent")  # logged data: no oracle


@pytest.mark.slow
def test_serve_ranks_on_an_imported_run(fx: Path, tmp_path: Path) -> None:
    """The ranking service loads an imported run (H&M) as it loads a market run, and ranks with it."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from mmrank.cli import app
    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings

    run = tmp_path / "run"
    import_data(run, preset="hm", **preset_args(fx)["hm"])
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_CONFIG)
    for cmd in (["pretrain", "--run", str(run), "--config", str(cfg)],
                ["embed", "--run", str(run), "--config", str(cfg)],
                ["ctr", "train", "--run", str(run), "--config", str(cfg), "--strategy", "simtier"]):
        res = CliRunner().invoke(app, cmd)
        assert res.exit_code == 0, (cmd, res.output, res.exception)
    ids = _table(run, "items").column("item_id").to_pylist()
    with TestClient(create_app(Settings(run=run, api_key="k" * 20, threads=1))) as c:
        user = c.get("/v1/users", params={"limit": 1}).json()[0]
        r = c.post("/v1/rank", json={"user": {"user_id": user["user_id"]}, "candidates": ids[:10]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert sorted(i["item_id"] for i in body["items"]) == sorted(ids[:10]) and not body["unknown"]
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)


def _as(path: Path, fmt: str, dst: Path, names: list[str] | None = None) -> Path:
    """``path`` (a CSV file) rewritten as Parquet or JSON Lines (every cell a string, as in the CSV),
    under a name whose suffix says nothing (the reader tells the format by the file's content)."""
    import pyarrow as pa

    from mmrank.data.readers import read_csv

    t = read_csv(path, names=names)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(t, dst)
    else:
        dst.write_text("".join(json.dumps(r) + "\n" for r in t.to_pylist()))
    assert isinstance(t, pa.Table)
    return dst


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_presets_read_parquet_and_json_lines_alike(fx: Path, tmp_path: Path, fmt: str) -> None:
    """The H&M and Taobao files as Parquet or JSON Lines (named .csv or .dat: the content decides)
    import to the same events as the CSV files."""
    hm = preset_args(fx)["hm"]
    other = dict(hm, items=_as(hm["items"], fmt, tmp_path / "hm" / "articles.dat"),
                 events=_as(hm["events"], fmt, tmp_path / "hm" / "transactions_train.csv"),
                 images=hm["items"].parent / "images")
    tb = preset_args(fx)["taobao"]["events"]
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    for preset, a, b in (("hm", dict(hm, images=hm["items"].parent / "images"), other),
                         ("taobao", {"events": tb}, {"events": _as(tb, fmt, tmp_path / "tb" / "UserBehavior.csv",
                                                                   names)})):
        import_data(tmp_path / f"{preset}-csv", preset=preset, **a)
        import_data(tmp_path / f"{preset}-{fmt}", preset=preset, **b)
        assert _table(tmp_path / f"{preset}-csv", "events").equals(_table(tmp_path / f"{preset}-{fmt}", "events"))
        ia, ib = _table(tmp_path / f"{preset}-csv", "items"), _table(tmp_path / f"{preset}-{fmt}", "items")
        assert ia.drop_columns(["image_path"]).equals(ib.drop_columns(["image_path"]))

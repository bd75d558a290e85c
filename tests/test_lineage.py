"""Lineage (issue 29): every artifact records the digests of what it was made from, and no stage serves
or trains on an artifact made from data the run no longer holds.

The end-to-end test builds a run from the H&M-shaped fixture (import, pretrain, embed, ctr compare),
imports a different, smaller catalog over it with ``--replace``, and shows that ``search``, ``ctr
compare`` and serve's bundle loading each stop with one line naming the stale artifact and the command
that rebuilds it, and that once rebuilt none of them returns an item that is gone. The unit tests pin
the module's own rules (digests, stamp/check, the data's self-healing digest, pre-lineage artifacts).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mmrank import lineage
from mmrank.lineage import StaleArtifact
from mmrank.testing.presets import FIXTURES, TINY_CONFIG, run_mmrank

sys.path.insert(0, str(FIXTURES))
from hm_like import make_hm_like  # noqa: E402

torch.set_num_threads(2)

CONFIG = TINY_CONFIG.replace("epochs: 2", "epochs: 1")


# ---- the module's rules --------------------------------------------------------------------------------
def test_digest_of_follows_content_and_name(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "sub"
    a.write_bytes(b"x" * 3_000_000)  # more than one read block
    b.write_bytes(b"x" * 3_000_000)
    c.mkdir()
    (c / "a.bin").write_bytes(b"x" * 3_000_000)
    assert lineage.digest_of([a]) == lineage.digest_of([c / "a.bin"])  # where it lies does not count
    assert lineage.digest_of([a]) != lineage.digest_of([b])  # its name does
    d0 = lineage.digest_of([a])
    a.write_bytes(b"x" * 2_999_999 + b"y")
    assert lineage.digest_of([a]) != d0 and len(d0) == 16
    assert lineage.digest_inputs({"x": "1", "y": "2"}) == lineage.digest_inputs({"y": "2", "x": "1"})
    assert lineage.digest_inputs({"x": "1"}) != lineage.digest_inputs({"x": "2"})


def test_check_matches_stops_on_a_change_and_notes_an_unknown_artifact(tmp_path: Path, capsys) -> None:
    art = tmp_path / "ctr" / "simtier"
    rec = lineage.stamp(art, {"data/items": "aa11", "representations": "embeddings:v1"})
    assert rec["digest"] == lineage.digest_inputs({"data/items": "aa11", "representations": "embeddings:v1"})
    assert json.loads((art / "lineage.json").read_text()) == rec
    assert lineage.check(art, {"data/items": "aa11"}, "mmrank ctr train") is True
    with pytest.raises(StaleArtifact) as err:
        lineage.check(art, {"data/items": "bb22"}, "mmrank ctr train --run R --strategy simtier")
    line = str(err.value)
    assert "\n" not in line and str(art) in line and "made from data/items aa11" in line
    assert "data/items.parquet is now bb22" in line and "`mmrank ctr train --run R --strategy simtier`" in line
    with pytest.raises(StaleArtifact, match="made from data/lists nothing"):  # an input it never had
        lineage.check(art, {"data/lists": "cc33"}, "x")
    assert lineage.matches(art, {"data/items": "bb22"}) is False
    old = tmp_path / "old"
    old.mkdir()
    assert lineage.matches(old, {"data/items": "aa11"}) is None
    assert lineage.check(old, {"data/items": "aa11"}, "mmrank embed --run R") is False
    assert lineage.check(old, {"data/items": "aa11"}, "mmrank embed --run R") is False
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and f"{old} has no lineage.json" in err_lines[0]
    assert "`mmrank embed --run R` rebuilds it" in err_lines[0]


def test_data_digest_is_hashed_once_and_follows_a_rewritten_table(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    pq.write_table(pa.table({"item_id": [1, 2, 3]}), run / "data" / "items.parquet")
    pq.write_table(pa.table({"ts": [5]}), run / "data" / "events.parquet")
    d1 = lineage.stamp_data(run / "data")
    assert set(d1) == {"data", "data/items", "data/events"}
    assert d1["data/items"] == lineage.digest_of([run / "data" / "items.parquet"])
    # the file holds no time: the same tables elsewhere give the same bytes
    other = tmp_path / "other"
    shutil.copytree(run / "data", other / "data")
    os.remove(other / "data" / "lineage.json")
    lineage.stamp_data(other / "data")
    assert (other / "data" / "lineage.json").read_bytes() == (run / "data" / "lineage.json").read_bytes()
    # read again: nothing is hashed
    calls = []
    real = lineage.digest_of
    monkeypatch.setattr(lineage, "digest_of", lambda paths: calls.append(paths) or real(paths))
    assert lineage.data_digests(run) == d1 and calls == []
    # a table rewritten by something that did not stamp: hashed again on the next read
    items = run / "data" / "items.parquet"
    pq.write_table(pa.table({"item_id": [1, 2, 4]}), items)
    st = os.stat(run / "data" / "lineage.json")
    os.utime(items, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # even within the clock's tick
    d2 = lineage.data_digests(run)
    assert d2["data/items"] != d1["data/items"] and d2["data/events"] == d1["data/events"]
    assert d2["data"] != d1["data"] and len(calls) == 1
    assert lineage.table_digest(items) == d2["data/items"]
    assert lineage.data_inputs(run, "items", "lists") == {"data/items": d2["data/items"]}


# ---- the pipeline: replace the data, then nothing old is served or trained on ---------------------------
def _cli(*args: object) -> str:
    from mmrank.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output


def _stops(*args: object) -> str:
    """`mmrank ARGS` in a fresh process stops with exit 2 and one line; returns it."""
    res = run_mmrank(*map(str, args))
    assert res.returncode == 2, (args, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def _smaller_catalog(src: Path, dst: Path) -> set[int]:
    """The first 120 articles of ``src`` under new names, and the transactions naming them."""
    dst.mkdir(parents=True)
    art = pq.read_table(src / "articles.parquet").slice(0, 120)
    names = pc.binary_join_element_wise(art.column("prod_name"), pa.scalar("v2"), " ")
    art = art.set_column(art.column_names.index("prod_name"), "prod_name", names)
    pq.write_table(art, dst / "articles.parquet")
    opts = pcsv.ConvertOptions(column_types={"article_id": pa.string(), "price": pa.string()})
    tx = pcsv.read_csv(src / "transactions_train.csv", convert_options=opts)
    tx = tx.filter(pc.is_in(tx.column("article_id"), value_set=art.column("article_id")))
    pcsv.write_csv(tx, dst / "transactions_train.csv")
    shutil.copytree(src / "images", dst / "images")
    return {int(a) for a in art.column("article_id").to_pylist()}


def _import(run: Path, root: Path, *extra: object) -> str:
    return _cli("data", "import", "--run", run, "--preset", "hm", "--items", root / "articles.parquet",
                "--events", root / "transactions_train.csv", "--images", root / "images", *extra)


@pytest.mark.slow
def test_replaced_data_is_never_served_or_trained_on_stale_artifacts(tmp_path: Path) -> None:
    from mmrank.serve.bundle import load_bundle

    src = make_hm_like(tmp_path / "src")
    run, cfg = tmp_path / "run", tmp_path / "run.yaml"
    cfg.write_text(CONFIG)
    _import(run, src)
    first = lineage.data_digests(run)
    _cli("pretrain", "--run", run, "--config", cfg)
    _cli("embed", "--run", run, "--config", cfg)
    _cli("ctr", "compare", "--run", run, "--config", cfg)
    version = (run / "encoder" / "version.txt").read_text().strip()
    # every artifact says what it was made from
    enc = lineage.read(run / "encoder")
    assert enc["digest"] == version and enc["inputs"] == lineage.encoder_inputs(run)
    emb = lineage.read(run / "embeddings" / f"v-{version}")
    assert emb["inputs"] == {"encoder": version, "data/items": first["data/items"]}
    ctr = lineage.read(run / "ctr" / "simtier")
    assert ctr["inputs"] == {"data/ctr_samples": first["data/ctr_samples"], "data/items": first["data/items"],
                             "representations": f"embeddings:{version}"}
    feats = [lineage.read(d) for d in (run / "features").iterdir()]
    assert all(f and f["inputs"]["items_image" if "items_image" in f["inputs"] else "items_title"]
               == f"data/items:{first['data/items']}" for f in feats)
    with load_bundle(run).store as store:
        old_ids = set(store.table.ids().tolist())

    new_ids = _smaller_catalog(src, tmp_path / "src2")
    gone = old_ids - new_ids
    assert len(gone) == 80 and new_ids < old_ids
    out = _import(run, tmp_path / "src2", "--replace")
    assert lineage.data_digests(run)["data/items"] != first["data/items"]
    said = out.strip().splitlines()[-1]  # the import names what is stale now, and how to rebuild it
    assert said.startswith("made from the data replaced, refused until rebuilt: ")
    for art, cmd in ((run / "encoder", "mmrank pretrain"), (run / "embeddings" / f"v-{version}", "mmrank embed"),
                     (run / "ctr" / "simtier", "mmrank ctr train")):
        assert f"{art} (`{cmd} --run {run}" in said

    # each stage stops with one line naming the most upstream stale artifact and its rebuild command
    line = _stops("search", "--run", run, "--text", "Dress 7 v2")
    assert f"{run}/encoder is stale: made from data/items {first['data/items']}" in line
    assert f"`mmrank pretrain --run {run}`" in line
    line = _stops("ctr", "compare", "--run", run, "--config", cfg)
    assert f"{run}/encoder is stale" in line and "mmrank pretrain" in line
    with pytest.raises(StaleArtifact, match="encoder is stale"):
        load_bundle(run)

    _cli("pretrain", "--run", run, "--config", cfg)
    # the encoder is new; the old table and CTR models are still stale
    line = _stops("search", "--run", run, "--text", "Dress 7 v2")
    assert f"embeddings/v-{version} is stale: made from data/items" in line
    assert f"`mmrank embed --run {run}`" in line
    _cli("embed", "--run", run, "--config", cfg)
    with pytest.raises(StaleArtifact, match=r"ctr/simtier is stale: made from data/ctr_samples .*"
                                            r"`mmrank ctr train --run .* --strategy simtier`"):
        load_bundle(run, "simtier")

    # rebuilt: nothing returns an item that is gone
    out = _cli("search", "--run", run, "--text", "Dress 7 v2", "--k", "50", "--json")
    hits = {h["item_id"] for h in json.loads(out)["results"]}
    assert hits and hits <= new_ids
    _cli("ctr", "compare", "--run", run, "--config", cfg)
    bundle = load_bundle(run, "simtier")
    try:
        assert set(bundle.store.table.ids().tolist()) == new_ids
        assert {h["item_id"] for h in bundle.store.search_text("Dress 7", k=200)} <= new_ids
        assert bundle.lineage["data"] == lineage.data_digests(run)["data"]
        assert bundle.lineage["ctr"] == lineage.read(run / "ctr" / "simtier")["digest"]
    finally:
        bundle.close()
    from mmrank.ctr.artifacts import load_model

    _, space, _ = load_model(run, "simtier")  # trained on the new data: its vocabularies know no gone item
    assert space.items.ids.size and not set(space.items.ids.tolist()) & gone
    assert set(space.vec_items.ids.tolist()) == new_ids


def test_embed_rebuilds_a_table_made_from_another_catalog(tiny_run: Path, capsys) -> None:
    """Same encoder version, another catalog (an encoder without lineage, e.g. a test's): the store
    refuses the old table, and ``embed`` drops and rebuilds it; items ingested into the old catalog
    are set aside, not carried into the new table."""
    from mmrank.store.items import ItemStore
    from mmrank.store.stage import embed_catalog
    from mmrank.store.tiny_encoder import TinyItemEncoder

    enc = TinyItemEncoder(dim=8)
    embed_catalog(tiny_run, enc, progress=False)
    items = pq.read_table(tiny_run / "data" / "items.parquet")
    with ItemStore.open(tiny_run, enc) as store:
        img = items.column("image")[0].as_py()
        store.ingest({"item_id": 10**9, "title": "a new shirt", "image": img})
    kept = items.slice(0, 300)
    pq.write_table(kept, tiny_run / "data" / "items.parquet")
    with pytest.raises(StaleArtifact, match=rf"v-{enc.version} is stale: made from data/items .*"
                                            rf"`mmrank embed --run {tiny_run}`"):
        ItemStore.open(tiny_run, enc)
    stats = embed_catalog(tiny_run, enc, progress=False)
    err = capsys.readouterr().err
    assert "was made from another catalog: rebuilding it" in err and "set aside" in err
    assert stats["items"] == 300 and stats["already_present"] == 0
    with ItemStore.open(tiny_run, enc) as store:
        assert set(store.table.ids().tolist()) == set(kept.column("item_id").to_pylist())
    assert list((tiny_run / "embeddings").glob("new_items.before-*.jsonl"))


def test_a_model_made_before_lineage_loads_with_a_note(tiny_run: Path, capsys) -> None:
    """No lineage.json (a run made by an earlier version): used, with one note naming the rebuild."""
    from mmrank.ctr.artifacts import load_model
    from mmrank.ctr.stage import train_strategy
    from mmrank.ctr.trainer import TrainConfig

    train_strategy(tiny_run, "id", train_cfg=TrainConfig(batch_size=512), progress=False)
    d = tiny_run / "ctr" / "id"
    assert lineage.read(d)["inputs"] == lineage.data_inputs(tiny_run, "ctr_samples", "items")
    os.remove(d / "lineage.json")
    model, _, _ = load_model(tiny_run, "id")
    assert model is not None
    assert f"{d} has no lineage.json" in capsys.readouterr().err
    # and once the data changes, a model that has lineage is refused
    lineage.stamp(d, {"data/ctr_samples": "0" * 16})
    with pytest.raises(StaleArtifact, match="ctr/id is stale"):
        load_model(tiny_run, "id")


def test_a_reranker_trained_on_other_lists_is_refused(tmp_path: Path) -> None:
    from mmrank.rerank.artifacts import load_model
    from mmrank.rerank.stage import train_model
    from mmrank.rerank.trainer import RerankTrainConfig
    from mmrank.store.tiny_encoder import TinyItemEncoder
    from mmrank.testing.lists import write_tiny_lists

    run = write_tiny_lists(tmp_path / "lists", n_requests=120, seed=5)
    train_model(run, "dnn", encoder=TinyItemEncoder(dim=8), train_cfg=RerankTrainConfig(batch_size=64),
                progress=False, one_thread_if_busy=False)
    rec = lineage.read(run / "rerank" / "dnn")
    assert rec["inputs"] == {**lineage.data_inputs(run, "lists", "items", "query_images"),
                             "representations": f"encoder:{TinyItemEncoder(dim=8).version}"}
    lists = run / "data" / "lists.parquet"
    pq.write_table(pq.read_table(lists).slice(0, 60), lists)
    with pytest.raises(StaleArtifact, match=rf"rerank/dnn is stale: made from data/lists .*"
                                            rf"`mmrank rerank train --run {run} --model dnn`"):
        load_model(run, "dnn")

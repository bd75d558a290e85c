"""Bulk embedding, real-time ingestion, search, the CLI and Ray, with a small real torch encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from mmrank.errors import DataError, MMRankError
from mmrank.store.backends import current_version, open_table
from mmrank.store.items import NEW_ITEMS, ItemStore, NewItemLog
from mmrank.store.stage import embed_catalog
from mmrank.store.tiny_encoder import TinyItemEncoder
from mmrank.testing.items import jpeg, make_items

torch.set_num_threads(1)
@pytest.fixture()
def enc() -> TinyItemEncoder:
    return TinyItemEncoder(dim=16, seed=0)


def test_embed_catalog_writes_every_item(tmp_path: Path, enc: TinyItemEncoder) -> None:
    ids, titles, images = make_items(tmp_path)
    stats = embed_catalog(tmp_path, enc, batch_size=32, progress=False)
    assert (stats["items"], stats["encoded"], stats["version"]) == (80, 80, enc.version)
    t = open_table(tmp_path / "embeddings")
    assert t.version == enc.version and t.dim == 16
    np.testing.assert_array_equal(t.ids(), ids)
    np.testing.assert_allclose(t.get(ids[:7]), enc.encode_items(titles[:7], images[:7]), atol=1e-6)
    assert stats["index"]["kind"] == "flat" and stats["index"]["recall_at_10"] == 1.0


def test_embed_resumes_without_duplicates(tmp_path: Path, enc: TinyItemEncoder) -> None:
    ids, _, _ = make_items(tmp_path)
    first = embed_catalog(tmp_path, enc, batch_size=16, progress=False, exclude_ids=ids[30:])
    assert first["encoded"] == 30
    second = embed_catalog(tmp_path, enc, batch_size=16, progress=False)
    assert (second["already_present"], second["encoded"], second["items"]) == (30, 50, 80)
    third = embed_catalog(tmp_path, enc, batch_size=16, progress=False)
    assert third["encoded"] == 0
    t = open_table(tmp_path / "embeddings")
    assert t.n_records == 80


@pytest.mark.parametrize("bad", ["image", "title"])
def test_bad_catalog_row_is_named(tmp_path: Path, enc: TinyItemEncoder, bad: str) -> None:
    make_items(tmp_path, bad_row=45 if bad == "image" else None,
               empty_title_row=45 if bad == "title" else None)
    with pytest.raises(DataError) as err:
        embed_catalog(tmp_path, enc, batch_size=32, progress=False)
    msg = str(err.value)
    assert "items.parquet: row 45" in msg and f"column '{bad}'" in msg
    # batches before the bad one are durable; the bad batch wrote nothing; nothing was published
    root = tmp_path / "embeddings"
    assert current_version(root) is None
    assert len(open_table(root, enc.version)) == 32


def test_ingest_is_visible_to_get_and_search(tmp_path: Path, enc: TinyItemEncoder) -> None:
    make_items(tmp_path)
    embed_catalog(tmp_path, enc, progress=False)
    reader = open_table(tmp_path / "embeddings")  # e.g. a CTR trainer in another process
    with ItemStore.open(tmp_path, enc, hold_writer=True) as store:
        img = jpeg("green", 999)
        out = store.ingest({"item_id": 123456, "title": "green formal dress", "image": img})
        assert out["item_id"] == 123456 and out["total_ms"] > 0
        want = enc.encode_items(["green formal dress"], [img])
        np.testing.assert_allclose(reader.get(np.array([123456])), want, atol=1e-6)
        hits = store.search_vector(want[0], k=3)
        assert hits[0]["item_id"] == 123456 and hits[0]["title"] == "green formal dress"
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert 123456 in [h["item_id"] for h in store.search_text("green formal dress", k=80)]
    # the index was saved with the new item; a new store finds it
    with ItemStore.open(tmp_path, enc) as again:
        assert again.search_vector(want[0], k=1)[0]["item_id"] == 123456


def test_index_catches_up_after_a_crash(tmp_path: Path, enc: TinyItemEncoder) -> None:
    """Items ingested but not yet in the saved index (the process died) are added on open."""
    make_items(tmp_path)
    embed_catalog(tmp_path, enc, progress=False)
    store = ItemStore.open(tmp_path, enc, hold_writer=True)
    img = jpeg("red", 77)
    store.ingest({"item_id": 777, "title": "red striped shirt", "image": img})
    store.table.close()  # no save_index(): as if killed
    again = ItemStore.open(tmp_path, enc)
    q = enc.encode_items(["red striped shirt"], [img])[0]
    assert again.search_vector(q, k=1)[0]["item_id"] == 777
    assert len(again.index) == 81


@pytest.mark.parametrize("case", ["undecodable", "empty_title", "existing_id", "other_version",
                                  "other_dim", "bad_id"])
def test_bad_ingest_raises_and_writes_nothing(tmp_path: Path, enc: TinyItemEncoder, case: str) -> None:
    ids, _, _ = make_items(tmp_path)
    embed_catalog(tmp_path, enc, progress=False)
    item = {"item_id": 9999, "title": "blue casual jeans", "image": jpeg("blue", 5)}
    encoder = enc
    if case == "undecodable":
        item["image"] = b"GIF89a garbage"
    elif case == "empty_title":
        item["title"] = ""
    elif case == "existing_id":
        item["item_id"] = int(ids[3])
    elif case == "bad_id":
        item["item_id"] = "abc"
    expect = {"undecodable": "undecodable image", "empty_title": "empty title",
              "existing_id": "already in the embedding table", "bad_id": "expected an integer",
              "other_version": "encoder version", "other_dim": "encoder version"}[case]
    with pytest.raises(DataError, match=expect):
        if case in ("other_version", "other_dim"):
            encoder = TinyItemEncoder(dim=16 if case == "other_version" else 8, seed=1)
            store = ItemStore.open(tmp_path, encoder, hold_writer=True)
        else:
            store = ItemStore.open(tmp_path, encoder, hold_writer=True)
        store.ingest(item)
    t = open_table(tmp_path / "embeddings")
    assert len(t) == 80 and t.n_records == 80
    assert not (tmp_path / "embeddings" / NEW_ITEMS).exists()


def test_ingest_refuses_vectors_of_wrong_dim(tmp_path: Path, enc: TinyItemEncoder) -> None:
    """An encoder that claims the table's version but returns vectors of another size."""
    make_items(tmp_path)
    embed_catalog(tmp_path, enc, progress=False)

    class Truncating(TinyItemEncoder):
        def encode_items(self, titles, images):
            return super().encode_items(titles, images)[:, :12]

    liar = Truncating(dim=16, seed=0)
    store = ItemStore.open(tmp_path, liar, hold_writer=True)
    with pytest.raises(DataError, match=r"shape \(1, 12\), expected \(1, 16\)"):
        store.ingest({"item_id": 1, "title": "red shirt", "image": jpeg("red", 1)})
    assert len(store.table) == 80


def test_shared_writer_ingest_and_new_version_reencodes_ingested_items(tmp_path: Path,
                                                                      enc: TinyItemEncoder) -> None:
    make_items(tmp_path)
    embed_catalog(tmp_path, enc, progress=False)
    with ItemStore.open(tmp_path, enc) as store:  # no held writer: the table is opened per ingest
        assert not store.table.writable
        store.ingest({"item_id": 5555, "title": "blue plain dress", "image": jpeg("blue", 55)})
        vec, found = store.vectors(np.array([5555]))
        assert found[0] and store.search_vector(vec[0], k=1)[0]["item_id"] == 5555
        assert store.meta(np.array([5555]))[1] == ["blue plain dress"]
    assert [r["item_id"] for r in NewItemLog(tmp_path / "embeddings" / NEW_ITEMS).read()] == [5555]
    enc2 = TinyItemEncoder(dim=8, seed=3)
    stats = embed_catalog(tmp_path, enc2, progress=False)
    assert stats["items"] == 81
    t = open_table(tmp_path / "embeddings")
    assert (t.version, t.dim) == (enc2.version, 8) and t.contains(np.array([5555]))[0]
    old = open_table(tmp_path / "embeddings", enc.version)
    assert old.dim == 16 and len(old) == 81


def test_search_by_item_leaves_the_item_out(tmp_path: Path, enc: TinyItemEncoder) -> None:
    ids, titles, _ = make_items(tmp_path)
    embed_catalog(tmp_path, enc, progress=False)
    store = ItemStore.open(tmp_path, enc)
    hits = store.search_item(int(ids[0]), k=5)
    assert len(hits) == 5 and int(ids[0]) not in [h["item_id"] for h in hits]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    with pytest.raises(DataError, match="not in the embedding table"):
        store.search_item(1, k=5)


def test_image_search_finds_same_colour(tmp_path: Path, enc: TinyItemEncoder) -> None:
    """Image search through the image-query tower returns items (the tiny encoder is untrained, so
    only the mechanics are checked: k results, sorted, titles attached)."""
    make_items(tmp_path)
    embed_catalog(tmp_path, enc, progress=False)
    hits = ItemStore.open(tmp_path, enc).search_image(jpeg("red", 1234), k=4)
    assert len(hits) == 4 and all(h["title"] for h in hits)


# ---- the CLI (registered by mmrank.cli) ----------------------------------------------------------------
def test_cli_search_by_item_and_json(tmp_path: Path, enc: TinyItemEncoder) -> None:
    from mmrank.cli import app

    ids, titles, _ = make_items(tmp_path)
    embed_catalog(tmp_path, enc, progress=False)
    runner = CliRunner()
    res = runner.invoke(app, ["search", "--run", str(tmp_path), "--item", str(ids[2]), "--k", "3"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 3
    item_id, score, title = lines[0].split("\t")
    assert int(item_id) in ids and -1.01 <= float(score) <= 1.01 and title == titles[list(ids).index(int(item_id))]
    res = runner.invoke(app, ["search", "--run", str(tmp_path), "--item", str(ids[2]), "--json"])
    doc = json.loads(res.output)
    assert doc["query"] == {"item": int(ids[2])} and len(doc["results"]) == 10
    assert set(doc["results"][0]) == {"item_id", "score", "title"}


def test_cli_search_needs_exactly_one_query(tmp_path: Path) -> None:
    from mmrank.cli import app

    res = CliRunner().invoke(app, ["search", "--run", str(tmp_path), "--text", "a", "--item", "3"])
    assert res.exit_code != 0 and isinstance(res.exception, MMRankError)


# ---- Ray ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_two_workers_gives_the_same_table(tmp_path: Path, enc: TinyItemEncoder) -> None:
    pytest.importorskip("ray", reason="Ray not installed (pip install 'mmrank[ray]')")
    a, b = tmp_path / "a", tmp_path / "b"
    ids, _, _ = make_items(a)
    make_items(b)
    embed_catalog(a, enc, batch_size=16, progress=False)
    embed_catalog(b, enc, batch_size=16, progress=False, ray_workers=2)
    ta, tb = open_table(a / "embeddings"), open_table(b / "embeddings")
    assert ta.version == tb.version
    np.testing.assert_array_equal(ta.ids(), tb.ids())
    np.testing.assert_allclose(ta.get(ids), tb.get(ids), atol=1e-6)

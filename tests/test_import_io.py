"""One reader of items for every stage: photos as bytes, as paths, or in a folder named by item id,
mixed row by row; pre-training, embedding and the CTR stage's encoder fallback all read it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmrank.data.io import read_items
from mmrank.errors import DataError
from mmrank.testing.presets import TINY_CONFIG

torch.set_num_threads(1)


def _jpeg(colour: tuple[int, int, int], size: int = 20) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "JPEG")
    return buf.getvalue()


def _items(d: Path, n: int = 9, missing: int | None = None) -> tuple[Path, list[bytes]]:
    """Rows cycle: bytes in 'image', a relative 'image_path', neither (photo in images/<id>.jpg)."""
    (d / "pics").mkdir(parents=True, exist_ok=True)
    (d / "images").mkdir(exist_ok=True)
    blobs, paths, want = [], [], []
    for i in range(n):
        b = _jpeg((25 * i, 255 - 25 * i, 90))
        want.append(b)
        if i % 3 == 0:
            blobs.append(b), paths.append(None)
        elif i % 3 == 1:
            (d / "pics" / f"{i}.jpg").write_bytes(b)
            blobs.append(None), paths.append(f"pics/{i}.jpg")
        else:
            if i != missing:
                (d / "images" / f"{10 + i}.jpg").write_bytes(b)
            blobs.append(None), paths.append(None)
    t = pa.table({"item_id": pa.array(np.arange(10, 10 + n), pa.int64()),
                  "title": [f"red shirt {i}" if i % 2 else f"blue shoe {i}" for i in range(n)],
                  "image": pa.array(blobs, pa.binary()), "image_path": pa.array(paths, pa.string()),
                  "category": ["shirt" if i % 2 else "shoe" for i in range(n)],
                  "price": pa.array(np.linspace(5, 50, n)), "created_at": pa.array(np.zeros(n, np.int64))})
    p = d / "items.parquet"
    pq.write_table(t, p)
    return p, want


def test_read_items_mixes_bytes_paths_and_folder_per_row(tmp_path: Path) -> None:
    path, want = _items(tmp_path)
    t = read_items(path, ["item_id", "title"])
    assert t.column_names == ["item_id", "title", "image"]
    assert t.column("image").to_pylist() == want
    # batches of 4 give the same rows
    from mmrank.data.io import iter_items

    got = [b for batch in iter_items(path, ["item_id"], batch_size=4) for b in batch.column("image").to_pylist()]
    assert got == want
    assert read_items(path, ["item_id"], images=False).column_names == ["item_id"]


def test_read_items_names_the_row_without_a_photo(tmp_path: Path) -> None:
    path, _ = _items(tmp_path, missing=5)
    with pytest.raises(DataError) as err:
        read_items(path)
    assert (err.value.file, err.value.row, err.value.column) == (str(path), 5, "image")
    assert "15.jpg" in str(err.value)


@pytest.mark.slow
def test_stages_read_a_mixed_catalog(tmp_path: Path) -> None:
    """The issue's case: a catalog mixing 'image' and 'image_path' rows pre-trains, embeds, and the
    CTR stage's encoder fallback (no embedding table) encodes it too."""
    from typer.testing import CliRunner

    from mmrank.cli import app
    from mmrank.ctr.representations import item_vectors

    src = tmp_path / "src"
    items, _ = _items(src, n=30)
    t = pq.read_table(items)
    names = t.column("item_id").to_pylist()
    log = ["ts,user_id,item_id,event"]
    rng = np.random.default_rng(0)
    for u in range(12):
        for j in range(8):
            log.append(f"{1000 + 100 * (u * 8 + j)},{u},{names[int(rng.integers(len(names)))]},click")
    (src / "events.csv").write_text("\n".join(log) + "\n")
    run = tmp_path / "run"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_CONFIG)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "import", "--run", str(run), "--items", str(items),
                              "--events", str(src / "events.csv")])
    assert res.exit_code == 0, res.output
    assert "items without image: 0" in res.output  # all three kinds of rows found their photo
    res = runner.invoke(app, ["pretrain", "--run", str(run), "--config", str(cfg)])
    assert res.exit_code == 0, (res.output, res.exception)
    ids, vecs, source = item_vectors(run)
    assert source.startswith("encoder:") and vecs.shape == (30, 16)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    res = runner.invoke(app, ["embed", "--run", str(run), "--config", str(cfg)])
    assert res.exit_code == 0, (res.output, res.exception)
    ids2, vecs2, source2 = item_vectors(run)
    assert source2.startswith("embeddings:") and np.array_equal(ids, ids2)
    np.testing.assert_allclose(vecs, vecs2, atol=1e-4)  # the table holds what the encoder gives


def test_queries_become_pairs_and_query_images(tmp_path: Path) -> None:
    """A log with search queries (text, or a photo by opaque id) keeps them: query -> purchase pairs,
    and the photos in query_images.parquet."""
    from mmrank.data.importer import import_data

    items, _ = _items(tmp_path / "src", n=6)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "qa7.jpg").write_bytes(_jpeg((1, 2, 3)))
    rows = ["ts,user_id,item_id,event,request_id,position,query_text,query_image"]
    for r in range(8):
        q = ("", "qa7") if r % 2 else (f"shoe {r}", "")
        for pos in range(3):
            rows.append(f"{100 * r},{r % 3},{10 + (r + pos) % 6},impression,{r},{pos},{q[0]},{q[1]}")
        rows.append(f"{100 * r},{r % 3},{10 + r % 6},click,{r},0,{q[0]},{q[1]}")
        rows.append(f"{100 * r + 5},{r % 3},{10 + r % 6},purchase,{r},0,{q[0]},{q[1]}")
    rows.append("150,1,11,click,1,7,,qa7")  # a click on a slot that was never shown: counted, no sample
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    s = import_data(tmp_path / "run", items=items, events=tmp_path / "log.csv", queries=tmp_path / "q")
    assert "pairs" not in s["substitutes"] and "impressions" not in s["substitutes"]
    assert s["lists"] == {"labels_without_impression": 1, "repeats_merged": {}} and s["counts"]["ctr_samples"] == 24
    pairs = pq.read_table(tmp_path / "run" / "data" / "pairs.parquet")
    assert pairs.num_rows == 8
    assert sorted(pairs.column("query_modality").to_pylist()) == ["image"] * 4 + ["text"] * 4
    assert set(pairs.column("query_image").drop_null().to_pylist()) == {"qa7"}
    q = pq.read_table(tmp_path / "run" / "data" / "query_images.parquet")
    assert q.column("query_image").to_pylist() == ["qa7"]

"""End to end with the real pre-training artifacts: `mmrank embed`, `mmrank search`, demo_stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoded_run(tiny_market: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny market with an off-the-shelf encoder (efficientnet-lite0 + MiniLM) in R/encoder/."""
    import shutil

    from mmrank.pretrain.config import PretrainConfig
    from mmrank.pretrain.stage import pretrain

    run = tmp_path_factory.mktemp("store_e2e") / "run"
    shutil.copytree(tiny_market, run)
    pretrain(run, PretrainConfig(variant="off-the-shelf"))
    return run


@pytest.mark.slow
def test_cli_embed_then_search_by_text_image_item(encoded_run: Path, tmp_path: Path) -> None:
    from mmrank.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["embed", "--run", str(encoded_run), "--batch-size", "128"])
    assert res.exit_code == 0, res.output
    assert "items" in res.output and (encoded_run / "embeddings" / "CURRENT").exists()
    items = pq.read_table(encoded_run / "data" / "items.parquet", columns=["item_id", "title", "image"])
    title, image = items.column("title")[3].as_py(), items.column("image")[3].as_py()
    item_id = items.column("item_id")[3].as_py()

    res = runner.invoke(app, ["search", "--run", str(encoded_run), "--text", title, "--k", "5"])
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in res.output.strip().splitlines()]
    assert len(rows) == 5 and all(len(r) == 3 for r in rows)
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)

    photo = tmp_path / "q.jpg"
    photo.write_bytes(image)
    res = runner.invoke(app, ["search", "--run", str(encoded_run), "--image", str(photo), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert len(doc["results"]) == 10
    assert item_id in [r["item_id"] for r in doc["results"]]  # its own photo finds the item

    res = runner.invoke(app, ["search", "--run", str(encoded_run), "--item", str(item_id)])
    assert res.exit_code == 0 and str(item_id) not in [l.split("\t")[0] for l in res.output.splitlines()]

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = runner.invoke(app, ["search", "--run", str(encoded_run), "--image", str(bad)])
    assert res.exit_code != 0 and "undecodable image" in str(res.exception)


@pytest.mark.slow
def test_demo_stage(encoded_run: Path) -> None:
    from mmrank.store.backends import open_table
    from mmrank.store.stage import demo_stage

    import shutil

    shutil.rmtree(encoded_run / "embeddings", ignore_errors=True)
    out = demo_stage(encoded_run, "tiny")
    json.dumps(out)
    n = pq.ParquetFile(encoded_run / "data" / "items.parquet").metadata.num_rows
    assert out["items"] == n and out["ingested"] == 10 and out["ingest_p50_ms"] > 0
    assert 0 <= out["image_search_recall_at_10"] <= 1
    t = open_table(encoded_run / "embeddings")
    assert len(t) == n and t.get(t.ids()[:5]).shape == (5, t.dim)
    assert np.allclose(np.linalg.norm(t.get(t.ids()[:5]), axis=1), 1, atol=1e-4)

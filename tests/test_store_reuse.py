"""`mmrank embed` after `mmrank pretrain` runs only the heads on the backbone outputs pre-training
cached, and gives the vectors re-encoding gives."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained_run(tiny_market: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmrank.cli import app

    run = tmp_path_factory.mktemp("reuse") / "run"
    shutil.copytree(tiny_market, run)
    res = CliRunner().invoke(app, ["pretrain", "--run", str(run), "--image-encoder", "cnn-small",
                                   "--text-encoder", "hash-bow", "--epochs", "1", "--batch-size", "64",
                                   "--queue-size", "256"])
    assert res.exit_code == 0, (res.output, res.exception)
    return run


def _embed(run: Path, reuse: bool) -> tuple[dict, np.ndarray, np.ndarray]:
    from mmrank.store.backends import open_table
    from mmrank.store.items import embeddings_root
    from mmrank.store.stage import embed_catalog

    stats = embed_catalog(run, reuse_features=reuse, progress=False)
    table = open_table(embeddings_root(run))
    try:
        ids = np.sort(table.ids())
        return stats, ids, table.get(ids)
    finally:
        table.close()


def test_embed_reuses_the_cache_and_matches_reencoding(trained_run: Path, tmp_path: Path) -> None:
    fresh, cached = tmp_path / "fresh", tmp_path / "cached"
    for d in (fresh, cached):
        shutil.copytree(trained_run, d)  # copytree keeps mtimes, so the cache stays valid
    s_fresh, ids_f, v_fresh = _embed(fresh, reuse=False)
    s_cached, ids_c, v_cached = _embed(cached, reuse=True)
    n = len(ids_f)
    assert s_fresh["from_cache"] == 0 and s_fresh["encoded"] == n
    assert s_cached["from_cache"] == n and s_cached["encoded"] == n
    np.testing.assert_array_equal(ids_f, ids_c)
    np.testing.assert_allclose(v_cached, v_fresh, atol=1e-5, rtol=0)


def test_a_touched_items_file_still_comes_from_the_cache(trained_run: Path, tmp_path: Path) -> None:
    """The cache vouches for the items' content (their digest), not for the file's mtime."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    items = run / "data" / "items.parquet"
    st = os.stat(items)
    os.utime(items, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    stats, ids, _ = _embed(run, reuse=True)
    assert stats["from_cache"] == len(ids) == 800


def test_a_changed_items_file_is_neither_cached_nor_embedded_with_the_old_encoder(
        trained_run: Path, tmp_path: Path) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmrank.lineage import StaleArtifact
    from mmrank.pretrain.data import cached_item_features

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    items = run / "data" / "items.parquet"
    t = pq.read_table(items)
    titles = t.column("title").to_pylist()
    titles[0] = titles[0] + " (renamed)"
    pq.write_table(t.set_column(t.column_names.index("title"), "title", pa.array(titles)), items)
    cfg = json.loads((run / "encoder" / "config.json").read_text())
    assert cached_item_features(run, cfg) is None  # the cache no longer vouches
    with pytest.raises(StaleArtifact, match=r"encoder is stale: made from data/items .*mmrank pretrain"):
        _embed(run, reuse=True)


def test_a_trainable_tail_is_not_taken_from_the_float16_cache(trained_run: Path) -> None:
    import json

    from mmrank.pretrain.data import cached_item_features

    cfg = json.loads((trained_run / "encoder" / "config.json").read_text())
    assert cached_item_features(trained_run, cfg) is not None
    assert cached_item_features(trained_run, {**cfg, "trainable_blocks": 1}) is None
    assert cached_item_features(trained_run, {**cfg, "image_size": cfg["image_size"] + 16}) is None

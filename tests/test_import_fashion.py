"""The real fashion catalog (2,000 items of 10 article types from ../shared/data) imported with a
small event log, through the whole pipeline; `mmrank search` then finds same-type products from a title.

The event log (tests/fixtures/fashion/events.csv, written by tests/fixtures/make_fixtures.py) is
made up: 300 shoppers who mostly view and order items of one favourite article type. It has no
impressions and no queries, so the run uses sampled negatives and item-to-item pairs (and says so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mmrank.testing.markets import FASHION, needs_shared_data
from mmrank.testing.presets import FIXTURES

torch.set_num_threads(2)

CONFIG = """\
pretrain: {image_encoder: cnn-small, text_encoder: hash-bow, image_size: 32, epochs: 3, batch_size: 128,
           queue_size: 1024, dim: 64, nested_dims: [64], hidden: 128}
embed: {threads: 2}
ctr: {seeds: 1, strategies: [id, simtier], curve: [], threads: 2,
      model: {emb_dim: 8, att_hidden: [16], mlp_hidden: [16], n_tiers: 8}}
"""


@pytest.mark.slow
@pytest.mark.shared_data
@needs_shared_data
def test_real_catalog_imported_runs_and_search_finds_same_type(tmp_path: Path) -> None:
    sys.path.insert(0, str(FIXTURES))
    from make_fixtures import fashion_subset

    from mmrank.cli import app
    from mmrank.store.items import ItemStore

    subset = fashion_subset(FASHION)
    t = pq.read_table(FASHION)
    t = t.filter(pc.is_in(t.column("item_id"), pa.array(list(subset), pa.int64())))
    assert t.num_rows == 2000
    items = tmp_path / "items.parquet"
    pq.write_table(t, items)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    runner = CliRunner()

    def ok(*args: object) -> str:
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, (args, res.output, res.exception)
        return res.output

    out = ok("data", "import", "--run", run, "--items", items, "--events", FIXTURES / "fashion" / "events.csv",
             "--mapping", FIXTURES / "fashion" / "mapping.yaml")
    assert "2000 items, 300 users" in out and "items without image: 0, without title: 0" in out
    ok("pretrain", "--run", run, "--config", cfg)
    ok("embed", "--run", run, "--config", cfg)
    ok("ctr", "compare", "--run", run, "--config", cfg)
    ok("report", "--run", run)
    assert "Imported data" in (run / "report" / "results.md").read_text()

    # a title finds products of its article type: the CLI for one, the store for 3 titles per type
    title = t.column("title")[int(np.flatnonzero(np.array(t.column("article_type").to_pylist()) == "Watches")[0])].as_py()
    lines = ok("search", "--run", run, "--text", title, "--k", "10").strip().splitlines()
    type_of = dict(zip(t.column("item_id").to_pylist(), t.column("article_type").to_pylist()))
    assert len(lines) == 10
    assert np.mean([type_of[int(line.split("\t")[0])] == "Watches" for line in lines]) >= 0.5
    types = np.array(t.column("article_type").to_pylist())
    ids, titles = t.column("item_id").to_pylist(), t.column("title").to_pylist()
    prec = []
    store = ItemStore.open(run)
    try:
        for a in sorted(set(types)):
            for r in np.flatnonzero(types == a)[:3]:
                hits = [h for h in store.search_text(titles[r], 11) if h["item_id"] != ids[r]][:10]
                prec.append(np.mean([type_of[h["item_id"]] == a for h in hits]))
    finally:
        store.close()
    # 10 balanced types: chance is 0.1; the run gets most of the top 10 right
    assert np.mean(prec) >= 0.5, prec
    json.dumps(prec)

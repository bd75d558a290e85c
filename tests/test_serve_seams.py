"""The seams the server stands on: request -> batch builder (identical logits to the Parquet path),
encoder-version agreement in the bundle loader, the serving item store, batching, thread settings."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrank.errors import ConfigError

torch.set_num_threads(1)
SRC = Path(__file__).resolve().parents[1] / "src" / "mmrank"


def _parquet_logits(run: Path, strategy: str, rows: np.ndarray) -> tuple[torch.Tensor, object]:
    from mmrank.ctr.artifacts import load_model
    from mmrank.ctr.data import load_samples, make_batch
    from mmrank.ctr.scoring import score

    model, space, _ = load_model(run, strategy)  # the run's whole table, as training and predict do
    samples = load_samples(run / "data" / "ctr_samples.parquet")
    return score(model, make_batch(space.encode(samples), rows)), samples


@pytest.mark.parametrize("strategy", ["id", "simtier", "simtier+make"])
def test_builder_gives_the_parquet_paths_logits(serving_run: Path, strategy: str) -> None:
    from mmrank.ctr.scoring import score
    from mmrank.serve.builder import RankQuery, build
    from mmrank.serve.bundle import load_bundle

    import pyarrow.parquet as pq

    # the test split's rows of 12 requests, as /v1/rank requests (user, history, region, candidates)
    t = pq.read_table(serving_run / "data" / "ctr_samples.parquet",
                      columns=["request_id", "user_id", "item_id", "region", "position",
                               "hist_item_ids", "split"])
    test = np.flatnonzero(np.asarray(t.column("split").to_pylist()) == "test")
    req = t.column("request_id").to_numpy()
    chosen = np.unique(req[test])[:12]
    rows = np.flatnonzero(np.isin(req, chosen))
    order = np.argsort(req[rows], kind="stable")
    rows = rows[order]
    expected, samples = _parquet_logits(serving_run, strategy, rows)

    bundle = load_bundle(serving_run, strategy)
    try:
        queries = []
        for r_id in chosen:
            rr = rows[req[rows] == r_id]
            hist = np.asarray(t.column("hist_item_ids")[int(rr[0])].as_py(), np.int64)
            queries.append(RankQuery(user_id=int(samples.user_id[rr[0]]), history=hist,
                                     region=int(samples.region[rr[0]]), query=None,
                                     candidates=samples.item_id[rr], positions=samples.position[rr]))
        built = build(queries, bundle)
        assert sum(len(q.unknown) for q in built.queries) == 0
        assert bundle.model.share_history  # serving computes per distinct history item / request
        fast = score(bundle.model, built.batch, built.vectors)
        bundle.model.share_history = False  # the plain packed path: the builder's inputs, exactly
        got = score(bundle.model, built.batch, built.vectors)
    finally:
        bundle.close()
    assert got.shape == expected.shape == (len(rows),)
    assert torch.equal(got, expected), float((got - expected).abs().max())
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
    # and the categories the store derived for the request are the samples' own
    assert torch.equal(built.batch["category"], torch.from_numpy(
        np.clip(samples.category_id[rows].astype(np.int64) + 1, 0, bundle.space.n_categories - 1)))


def test_bundle_refuses_a_ctr_model_of_another_encoder_version_of_the_same_width(serving_run_copy: Path) -> None:
    from mmrank.ctr.artifacts import load_model
    from mmrank.serve.bundle import load_bundle
    from mmrank.testing.serving import new_encoder

    old = (serving_run_copy / "encoder" / "version.txt").read_text().strip()
    new = new_encoder(serving_run_copy, seed=1)  # same architecture and width, other weights
    assert new != old
    with pytest.raises(ConfigError, match=re.escape(old)):
        load_bundle(serving_run_copy, "simtier")
    with pytest.raises(ConfigError, match="encoder version"):
        load_model(serving_run_copy, "simtier")  # the Parquet path checks the version too, not the width
    b = load_bundle(serving_run_copy, "id")  # the ID model reads no representations: it loads
    assert b.encoder_version == new and b.store.version == new
    b.close()


def test_bundle_refuses_a_reranker_of_another_encoder_version(serving_run_copy: Path, monkeypatch) -> None:
    import sys
    import types

    from mmrank.serve.bundle import load_bundle

    (serving_run_copy / "rerank").mkdir()
    b = load_bundle(serving_run_copy, "id")
    assert b.reranker is None and "absent" in b.rerank_status  # no model trained under R/rerank/
    b.close()

    class _Rr:  # what mmrank.rerank.serving.load will return: a re-ranker stamped with its version
        name, version, encoder_version = "armmt", "r1", "some-other-encoder"

    mod = types.ModuleType("mmrank.rerank.serving")
    mod.load = lambda run, encoder_version, hardware=None: _Rr()
    monkeypatch.setitem(sys.modules, "mmrank.rerank", types.ModuleType("mmrank.rerank"))
    monkeypatch.setitem(sys.modules, "mmrank.rerank.serving", mod)
    with pytest.raises(ConfigError, match="some-other-encoder"):
        load_bundle(serving_run_copy, "id")


def test_serving_stores_are_independent_objects_and_see_each_others_writes(serving_run_copy: Path) -> None:
    import pyarrow.parquet as pq

    from mmrank.store.encoding import load_encoder
    from mmrank.store.items import ItemExists, ItemStore

    enc = load_encoder(serving_run_copy)
    a, b = ItemStore.open(serving_run_copy, enc), ItemStore.open(serving_run_copy, enc)
    items = pq.read_table(serving_run_copy / "data" / "items.parquet", columns=["image", "category"])
    new_id = 9_000_000_001
    assert not a.vectors(np.array([new_id]))[1][0]
    a.ingest({"item_id": new_id, "title": "a brand new linen shirt", "image": items.column("image")[0].as_py(),
              "category": items.column("category")[0].as_py()})
    vec, found = b.vectors(np.array([new_id]))  # the other store (as another process would)
    assert found[0] and np.isfinite(vec).all()
    cats, titles = b.meta(np.array([new_id]))
    assert titles[0] == "a brand new linen shirt" and cats[0] == a.category_id(items.column("category")[0].as_py())
    assert new_id in [h["item_id"] for h in b.search_vector(vec[0], k=3)]
    with pytest.raises(ItemExists):
        b.ingest({"item_id": new_id, "title": "again", "image": items.column("image")[0].as_py()})
    a.close(), b.close()
    # a third store opened after both closed still has it (durable)
    c = ItemStore.open(serving_run_copy, enc)
    assert c.vectors(np.array([new_id]))[1][0]
    c.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_batcher_coalesces_concurrent_requests_into_fewer_forwards(serving_run: Path, workers: int) -> None:
    from mmrank.serve.scoring import run_batch
    from mmrank.serve.batching import RankBatcher
    from mmrank.serve.builder import RankQuery
    from mmrank.serve.bundle import load_bundle

    bundle = load_bundle(serving_run, "simtier")
    ids = bundle.store.table.ids()
    users = [u["user_id"] for u in bundle.users.sample(16)]
    rng = np.random.default_rng(0)
    queries = [RankQuery(user_id=u, history=None, region=None, query=None,
                         candidates=rng.choice(ids, 40, replace=False)) for u in users]
    forwards: list[tuple[int, int]] = []

    async def go() -> list:
        b = RankBatcher(lambda: bundle, run_batch, max_wait=0.05, workers=workers,
                        on_batch=lambda n, rows, s: forwards.append((n, rows)))
        b.start()
        b.inflight = len(queries)  # as the app's middleware counts them
        try:
            return await asyncio.gather(*(b.submit(q) for q in queries))
        finally:
            await b.stop()

    together = asyncio.run(go())
    alone = [run_batch(bundle, [q], [False])[0] for q in queries]
    bundle.close()
    assert sum(n for n, _ in forwards) == 16 and len(forwards) < 16
    assert max(n for n, _ in forwards) > 1
    for t, a in zip(together, alone):  # batching changes nothing in the answer (up to float rounding)
        assert [i["item_id"] for i in t["items"]] == [i["item_id"] for i in a["items"]]
        np.testing.assert_allclose([i["logit"] for i in t["items"]], [i["logit"] for i in a["items"]],
                                   rtol=0, atol=1e-5)


def test_one_module_owns_thread_settings() -> None:
    offenders = []
    for f in SRC.rglob("*.py"):
        if f.name == "threads.py" and f.parent == SRC:
            continue
        text = f.read_text()
        for pat in ("set_num_threads(", "omp_set_num_threads(", "set_num_interop_threads("):
            if pat in text:
                offenders.append(f"{f.relative_to(SRC)}: {pat}")
    assert offenders == []
    from mmrank import threads

    before = threads.get()
    with threads.limited(1):
        assert torch.get_num_threads() == 1
    assert threads.get() == before


def test_items_acknowledged_under_an_old_version_are_encoded_into_the_new_one(serving_run_copy: Path) -> None:
    import pyarrow.parquet as pq

    from mmrank.serve.bundle import load_bundle
    from mmrank.testing.serving import new_encoder

    old = load_bundle(serving_run_copy, "id")
    items = pq.read_table(serving_run_copy / "data" / "items.parquet", columns=["image", "category"])
    old.store.ingest({"item_id": 9_100_000_001, "title": "late arrival wool scarf",
                      "image": items.column("image")[2].as_py(), "category": items.column("category")[2].as_py()})
    new_version = new_encoder(serving_run_copy, seed=3)
    # posted to the old server after the new table was built (the window before a swap)
    old.store.ingest({"item_id": 9_100_000_002, "title": "later arrival cotton scarf",
                      "image": items.column("image")[3].as_py()})
    new = load_bundle(serving_run_copy, "id")
    try:
        assert new.encoder_version == new_version != old.encoder_version
        vecs, found = new.store.vectors(np.array([9_100_000_001, 9_100_000_002]))
        assert found.all()
        np.testing.assert_allclose(vecs[1], new.encoder.encode_items(
            ["later arrival cotton scarf"], [items.column("image")[3].as_py()])[0], atol=1e-5)
        assert new.store.meta(np.array([9_100_000_002]))[1] == ["later arrival cotton scarf"]
    finally:
        old.close(), new.close()

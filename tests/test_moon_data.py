"""Issue 20 (data side): items without a photo or a title, in the market and in `mmrank data import`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
import torch

from mmrank.data.photos import placeholder_image


@pytest.fixture(scope="module")
def gappy_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmrank.data.market import generate_market, market_config

    run = tmp_path_factory.mktemp("gappy")
    generate_market(market_config(size="tiny", seed=3, n_items=1000, n_users=200, n_impressions=2000,
                                  missing_image_share=0.2, missing_title_share=0.1,
                                  both_query_share=0.25), run)
    return run


def test_market_shares_of_missing_photos_and_titles_are_honoured(gappy_market: Path) -> None:
    items = pq.read_table(gappy_market / "data" / "items.parquet")
    has_image = np.asarray(items.column("has_image").to_pylist())
    has_title = np.asarray(items.column("has_title").to_pylist())
    # 1000 items: a binomial share's std is ~0.013 at 0.2 and ~0.009 at 0.1
    assert abs((~has_image).mean() - 0.2) < 0.04
    assert abs((~has_title).mean() - 0.1) < 0.03
    assert not (~has_image & ~has_title).any()  # an item keeps one of the two
    grey = placeholder_image()
    images, titles = items.column("image").to_pylist(), items.column("title").to_pylist()
    assert all((b == grey) == (not h) for b, h in zip(images, has_image))
    assert all((t == "") == (not h) for t, h in zip(titles, has_title))
    # the columns come last: the ones before them keep their place
    assert items.column_names[-2:] == ["has_image", "has_title"]


def test_default_market_has_every_modality(tiny_market: Path) -> None:
    items = pq.read_table(tiny_market / "data" / "items.parquet", columns=["has_image", "has_title", "title"])
    assert all(items.column("has_image").to_pylist()) and all(items.column("has_title").to_pylist())
    assert all(items.column("title").to_pylist())


def test_shares_that_leave_an_item_nothing_are_refused() -> None:
    from mmrank.data.market import market_config
    from mmrank.errors import MMRankError

    with pytest.raises((MMRankError, ValueError), match="at most 1"):
        market_config(size="tiny", missing_image_share=0.7, missing_title_share=0.5)


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def test_import_accepts_rows_without_photo_or_title(tmp_path: Path) -> None:
    from mmrank.data.importer import import_data

    photo = _jpeg()
    t = pa.table({"item_id": pa.array([1, 2, 3, 4], pa.int64()),
                  "title": pa.array(["red shirt", None, "  ", "blue bag"], pa.string()),
                  "image": pa.array([photo, photo, None, None], pa.binary()),
                  "category": ["shirt", "shirt", "bag", "bag"]})
    pq.write_table(t, tmp_path / "items.parquet")
    (tmp_path / "events.csv").write_text("ts,user_id,item_id,event\n" + "\n".join(
        f"{1000 + 10 * i},{i % 2},{1 + i % 4},click" for i in range(8)) + "\n")
    s = import_data(tmp_path / "run", items=tmp_path / "items.parquet", events=tmp_path / "events.csv")
    assert s["items_without"]["image"] == 2 and s["items_without"]["title"] == 2
    items = pq.read_table(tmp_path / "run" / "data" / "items.parquet")
    assert items.column("has_image").to_pylist() == [True, True, False, False]
    assert items.column("has_title").to_pylist() == [True, False, False, True]
    assert items.column("image").to_pylist()[2] == placeholder_image()


class _Toy(torch.nn.Module):
    """A tower that passes features through (L2-normalised): Acc@N is then a property of the data."""

    dim = 8

    def _n(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.float(), dim=-1)

    def text_query(self, x):
        return self._n(x)

    def image_query(self, x):
        return self._n(x)

    def item(self, img, txt):
        return self._n(img + txt)


def test_acc_by_item_modality_adds_up_to_the_query_modality(tmp_path: Path) -> None:
    from mmrank.pretrain.data import IMAGE, TEXT, Features, PairTable
    from mmrank.pretrain.evaluate import ITEM_MODALITIES, evaluate, item_modality

    rng = np.random.default_rng(0)
    n_items, n_pairs = 60, 200
    item_img = torch.from_numpy(rng.normal(size=(n_items, 8)).astype(np.float32))
    item_txt = torch.from_numpy(rng.normal(size=(n_items, 8)).astype(np.float32))
    pos = rng.integers(0, n_items, n_pairs)
    modality = np.where(rng.random(n_pairs) < 0.4, IMAGE, TEXT).astype(np.int8)
    noisy = (item_img + item_txt).numpy()[pos] + rng.normal(scale=1.5, size=(n_pairs, 8))
    q = torch.from_numpy(noisy.astype(np.float32))
    pairs = PairTable(modality, [None] * n_pairs, [None] * n_pairs, pos, np.full(n_pairs, -1),
                      rng.random(n_pairs) < 0.7, np.arange(n_pairs))
    feats = Features(item_img, item_txt, q, q, np.arange(n_pairs))
    # the items file gives the item modalities
    ids = np.arange(n_items, dtype=np.int64) + 500
    has_image, has_title = rng.random(n_items) < 0.7, np.ones(n_items, bool)
    has_title[has_image] = rng.random(int(has_image.sum())) < 0.7
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"item_id": ids[::-1].copy(), "has_image": has_image[::-1].copy(),
                             "has_title": has_title[::-1].copy()}), tmp_path / "data" / "items.parquet")
    codes = item_modality(tmp_path, ids)
    assert (codes == np.where(has_image & has_title, 0, np.where(has_image, 1, 2))).all()
    out = evaluate(_Toy(), feats, pairs, item_codes=codes)
    by = out["by_item_modality"]
    for m in ("image", "text"):
        counts = by["n_test"][m]
        assert sum(counts.values()) == out["n_test"][m]
        assert min(counts.values()) > 0
        for n in (1, 5):
            total = sum(by[f"acc@{n}"][m][g] * counts[g] for g in ITEM_MODALITIES)
            assert total / out["n_test"][m] == pytest.approx(out[f"acc@{n}"][m], abs=1e-9)
            assert 0.0 < out[f"acc@{n}"][m] < 1.0  # neither trivial nor empty


@pytest.fixture(scope="module")
def noisy_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmrank.data.market import generate_market, market_config

    run = tmp_path_factory.mktemp("noisy")
    generate_market(market_config(size="tiny", seed=1, n_items=400, n_users=300, n_impressions=20_000,
                                  noisy_pair_share=0.2), run)
    return run


def test_noisy_pairs_are_flagged_only_under_truth(noisy_market: Path, tiny_market: Path) -> None:
    pairs = pq.read_table(noisy_market / "data" / "pairs.parquet")
    noisy = pq.read_table(noisy_market / "truth" / "noisy_pairs.parquet")
    train = np.asarray(pairs.column("split").to_pylist()) == "train"
    ids = noisy.column("pair_id").to_numpy()
    assert train[ids].all()  # test pairs stay clean
    assert abs(len(ids) / train.sum() - 0.2) < 0.06
    # the pairs table carries the noisy item, and no column says so
    assert (pairs.column("pos_item_id").to_numpy()[ids] == noisy.column("logged_item_id").to_numpy()).all()
    assert (noisy.column("logged_item_id").to_numpy() != noisy.column("sought_item_id").to_numpy()).all()
    assert pairs.column_names == pq.read_schema(tiny_market / "data" / "pairs.parquet").names
    assert not [p for p in (noisy_market / "data").rglob("*") if "noisy" in p.name]
    assert not (tiny_market / "truth" / "noisy_pairs.parquet").exists()  # share 0: no file, same data


def test_evaluator_measures_a_filters_precision(noisy_market: Path) -> None:
    from mmrank.data.truth import Evaluator
    from mmrank.errors import DataError

    ev = Evaluator(noisy_market)
    noisy = pq.read_table(noisy_market / "truth" / "noisy_pairs.parquet").column("pair_id").to_numpy()
    split = pq.read_table(noisy_market / "data" / "pairs.parquet").column("split").to_pylist()
    clean = [i for i, s in enumerate(split) if s == "train" and i not in set(noisy.tolist())]
    dropped = list(noisy[:3]) + clean[:1]  # 3 of 4 dropped are noise
    out = ev.filter_precision(dropped)
    assert out["precision"] == pytest.approx(0.75)
    assert out["recall"] == pytest.approx(3 / len(noisy))
    assert out["dropped"] == 4 and out["dropped_noisy"] == 3 and out["noisy"] == len(noisy)
    assert ev.filter_precision([])["precision"] is None
    with pytest.raises(DataError, match="not a row of pairs.parquet"):
        ev.filter_precision([len(split)])


def test_market_both_queries_carry_words_and_a_photo(gappy_market: Path, tiny_market: Path) -> None:
    pairs = pq.read_table(gappy_market / "data" / "pairs.parquet")
    mod = np.asarray(pairs.column("query_modality").to_pylist())
    text, image = pairs.column("query_text").to_pylist(), pairs.column("query_image").to_pylist()
    assert set(mod) == {"text", "image", "both"}
    for m, t, i in zip(mod, text, image):
        assert (t is not None) == (m != "image") and (i is not None) == (m != "text")
    ev = pq.read_table(gappy_market / "truth" / "requests.parquet", columns=["surface", "photo_query"])
    events = pq.read_table(gappy_market / "data" / "events.parquet", columns=["request_id", "query_text",
                                                                              "query_image", "surface"])
    search = pa.compute.equal(events.column("surface"), "search")
    e = events.filter(search)
    _, first = np.unique(e.column("request_id").to_numpy(), return_index=True)
    t_ok = ~np.asarray(pa.compute.is_null(e.column("query_text")).to_pylist())[first]
    i_ok = ~np.asarray(pa.compute.is_null(e.column("query_image")).to_pylist())[first]
    both = (t_ok & i_ok).mean()
    assert abs(both - 0.25) < 0.06 and abs((i_ok & ~t_ok).mean() - 0.3) < 0.06  # request shares
    photos = set(pq.read_table(gappy_market / "data" / "query_images.parquet",
                               columns=["query_image"]).column("query_image").to_pylist())
    assert {i for i in image if i is not None} <= photos
    assert "both" not in pq.read_table(tiny_market / "data" / "pairs.parquet").column("query_modality").to_pylist()


def test_both_queries_use_the_mean_of_text_and_image_vectors() -> None:
    from mmrank.pretrain.data import IMAGE, TEXT, Features, PairTable
    from mmrank.pretrain.evaluate import BOTH, evaluate

    rng = np.random.default_rng(1)
    n_items, n = 30, 90
    item = torch.from_numpy(rng.normal(size=(n_items, 8)).astype(np.float32))
    pos = rng.integers(0, n_items, n)
    modality = np.array([TEXT, IMAGE, BOTH] * 30, np.int8)
    target = (2 * item).numpy()[pos]
    text_q = torch.from_numpy((target + rng.normal(scale=2.0, size=(n, 8))).astype(np.float32))
    image_q = torch.from_numpy((target + rng.normal(scale=2.0, size=(n, 8))).astype(np.float32))
    pairs = PairTable(modality, [None] * n, [None] * n, pos, np.full(n, -1), np.ones(n, bool), np.arange(n))
    feats = Features(item, item, text_q, image_q, np.arange(n))
    plain = evaluate(_Toy(), feats, pairs)
    assert "both" not in plain["acc@1"]  # no rows for both queries without their two query rows
    feats.qrow_image = np.arange(n)  # a both query's photo row (its words' row is qrow)
    out = evaluate(_Toy(), feats, pairs)
    assert out["n_test"]["both"] == 30 and out["acc@1"]["text"] == plain["acc@1"]["text"]
    # the mean of two independent noisy views finds its item at least as often as either (here: more)
    assert out["acc@5"]["both"] > max(out["acc@5"]["text"], out["acc@5"]["image"])

    class _WithBoth(_Toy):
        def query(self, i, t, modality):
            assert (modality == BOTH).all()
            return self._n(i)  # a model's own rule is used when it has one

    own = evaluate(_WithBoth(), feats, pairs)
    img_rows = np.flatnonzero(modality == BOTH)
    feats2 = Features(item, item, text_q, image_q[img_rows], np.arange(n))
    check = evaluate(_Toy(), feats2, PairTable(np.full(30, IMAGE, np.int8), [None] * 30, [None] * 30,
                                               pos[img_rows], np.full(30, -1), np.ones(30, bool), np.arange(30)))
    assert own["acc@1"]["both"] == pytest.approx(check["acc@1"]["image"])


def test_by_item_modality_is_averaged_over_seeds() -> None:
    from mmrank.pretrain.evaluate import mean_by_item_modality

    one = {"by_item_modality": {"n_test": {"text": {"both": 2}}, "acc@1": {"text": {"both": 0.5, "text_only": None}}}}
    two = {"by_item_modality": {"n_test": {"text": {"both": 2}}, "acc@1": {"text": {"both": 1.0, "text_only": None}}}}
    got = mean_by_item_modality([one, two])
    assert got["acc@1"]["text"] == {"both": 0.75, "text_only": None}
    assert mean_by_item_modality([{}]) is None


def test_missing_modalities_and_noisy_pairs_end_to_end(tmp_path: Path) -> None:
    """A market with items lacking a photo or a title, both-queries and noisy training pairs runs through
    `pretrain compare` (plain tower and moon2): Acc@N for both-queries and per item modality come out,
    and the filter's dropped pairs are scored against the truth by evaluation code."""
    import json

    from mmrank.data.market import generate_market, market_config
    from mmrank.data.truth import Evaluator
    from mmrank.pretrain.config import PretrainConfig
    from mmrank.report.filter import filter_report
    from mmrank.pretrain.stage import compare

    run = tmp_path / "run"
    generate_market(market_config(size="tiny", seed=5, n_items=400, n_users=300, n_impressions=6000,
                                  missing_image_share=0.2, missing_title_share=0.1, both_query_share=0.25,
                                  noisy_pair_share=0.2), run)
    cfg = PretrainConfig(image_encoder="cnn-small", text_encoder="hash-bow", image_size=32, epochs=2,
                         batch_size=32, queue_size=128, dim=32, nested_dims=[32], hidden=32)
    compare(run, cfg, variants=("scl", "moon2"))
    detail = json.loads((run / "pretrain" / "compare_detail.json").read_text())
    for row in ("scl", "moon2"):
        v = detail["variants"][row]
        assert v["n_test"]["both"] >= 1 and 0.0 <= v["acc@5"]["both"] <= 1.0
        by = v["by_item_modality"]["n_test"]
        assert set(by) == {"image", "text", "both"}
        assert sum(by["image"].values()) == v["n_test"]["image"]
        assert by["image"]["text_only"] + by["text"]["text_only"] > 0   # items without a photo were tested
    dropped = json.loads((run / "pretrain" / "moon2" / "dropped.json").read_text())
    ids = sorted({r for e in dropped["epochs"] for r in e["pair_rows"]})
    assert ids
    score = Evaluator(run).filter_precision(ids)
    assert 0.0 <= score["precision"] <= 1.0 and score["dropped"] == len(ids)
    report = filter_report(run)  # `mmrank report filter`: the same figures, per row and epoch
    assert report["rows"]["moon2"]["all"] == score and report["noise_share"] == score["noise_share"]
    assert set(report["acc@1"]) == {"scl", "moon2"}
    assert (run / "pretrain" / "filter_report.json").exists()


def test_items_without_a_photo_or_title_run_through_embed_ctr_and_serve(tmp_path: Path) -> None:
    """A market where 30% of items have no photo and 10% no title: the encoder, the embedding table, a
    CTR model and the service all run; searching by the title of an item without a photo returns it
    among the results, and the service ranks candidates that include such items. (Embedding encodes a
    missing photo as the importer's placeholder image; the modality flags are read by pre-training and
    its evaluation.)"""
    from fastapi.testclient import TestClient

    from mmrank.ctr.stage import train_strategy
    from mmrank.data.market import generate_market, market_config
    from mmrank.serve.app import create_app
    from mmrank.serve.config import Settings
    from mmrank.testing.serving import new_encoder
    from mmrank.threads import limited

    run = tmp_path / "run"
    with limited(1):
        generate_market(market_config(size="tiny", seed=4, n_items=300, n_users=300, n_impressions=8000,
                                      missing_image_share=0.3, missing_title_share=0.1), run)
        new_encoder(run)
        train_strategy(run, "simtier", make_epochs=1, progress=False)
    items = pq.read_table(run / "data" / "items.parquet",
                          columns=["item_id", "title", "has_image", "has_title"]).to_pylist()
    no_photo = [r for r in items if not r["has_image"] and r["has_title"]]
    no_title = [r for r in items if not r["has_title"]]
    assert no_photo and no_title
    app = create_app(Settings(run=run, threads=1))
    with TestClient(app) as client:
        found = 0
        for r in no_photo[:20]:
            res = client.post("/v1/search", json={"text": r["title"], "k": 10})
            assert res.status_code == 200
            found += r["item_id"] in [h["item_id"] for h in res.json()["results"]]
        assert found >= 10, f"only {found} of 20 photo-less items found by their own title"
        user = client.get("/v1/users", params={"limit": 1}).json()[0]
        cands = [r["item_id"] for r in no_photo[:5] + no_title[:5]]
        res = client.post("/v1/rank", json={"user": {"user_id": user["user_id"]}, "candidates": cands})
        assert res.status_code == 200
        assert res.json()["unknown"] == []
        assert sorted(h["item_id"] for h in res.json()["items"]) == sorted(cands)

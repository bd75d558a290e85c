"""The synthetic market: determinism, manifest, the real-catalog mode, point-in-time sequences."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import FASHION, needs_shared_data
from mmrank.data.market import generate_market, market_config
from mmrank.data.render import render_query_image


def _digests(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / "data").glob("*.parquet"))}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    cfg = market_config(size="tiny", seed=7, n_items=300, n_users=300, n_impressions=5_000)
    generate_market(cfg, tmp_path / "a")
    generate_market(cfg, tmp_path / "b")
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert set(a) >= {"items.parquet", "events.parquet", "truth.parquet", "pairs.parquet",
                      "ctr_samples.parquet", "lists.parquet"}
    assert a == b
    generate_market(cfg.model_copy(update={"seed": 8}), tmp_path / "c")
    assert _digests(tmp_path / "c")["events.parquet"] != a["events.parquet"]


def test_manifest_counts_and_oracle(tiny_market: Path) -> None:
    man = json.loads((tiny_market / "data" / "manifest.json").read_text())
    assert man["simulated"] is True
    for name in ("items", "events", "pairs", "ctr_samples", "lists"):
        assert man["counts"][name] == pq.ParquetFile(tiny_market / "data" / f"{name}.parquet").metadata.num_rows
    assert man["counts"]["impressions"] == man["counts"]["ctr_samples"] == 30_000
    # Scoring clicks by their true probability is far better than chance, and not perfect.
    assert 0.6 < man["oracle_auc"] < 0.99
    truth = pq.read_table(tiny_market / "data" / "truth.parquet")
    assert truth.num_rows == 30_000
    p = truth.column("p_click").to_numpy()
    assert np.all((p > 0) & (p < 1))
    assert np.all(truth.column("p_purchase").to_numpy() <= truth.column("p_cart").to_numpy() + 1e-12)


def test_items_show_attributes_and_new_items_arrive(tiny_market: Path) -> None:
    items = pq.read_table(tiny_market / "data" / "items.parquet")
    created = items.column("created_at").to_numpy()
    assert 0.5 < (created == 0).mean() < 0.9 and created.max() > 0  # new items keep arriving
    titles = items.column("title").to_pylist()
    assert len(set(titles)) > 0.5 * len(titles)
    # Popularity is long-tailed: the top 10% of items take most impressions.
    ev = pq.read_table(tiny_market / "data" / "events.parquet", columns=["item_id", "event"])
    imp = ev.filter(pc.equal(ev.column("event"), "impression")).column("item_id").to_numpy()
    counts = np.sort(np.unique(imp, return_counts=True)[1])[::-1]
    assert counts[: max(1, len(counts) // 10)].sum() > 0.4 * counts.sum()


def test_point_in_time_sequences_never_hold_the_present_or_future(tiny_market: Path) -> None:
    s = pq.read_table(tiny_market / "data" / "ctr_samples.parquet")
    ts = s.column("ts").to_numpy()
    hist_ts = s.column("hist_ts").combine_chunks()
    lengths = np.diff(hist_ts.offsets.to_numpy())
    flat = hist_ts.flatten().to_numpy()
    owner = np.repeat(np.arange(len(ts)), lengths)
    assert lengths.sum() > 0 and lengths.max() <= 50
    assert np.all(flat < ts[owner]), "a behaviour sequence holds an event at or after its sample"
    # Each history is exactly the user's last clicks before ts (slow obvious check on a subsample).
    ev = pq.read_table(tiny_market / "data" / "events.parquet").to_pylist()
    clicks: dict[int, list[tuple[int, int]]] = {}
    for e in ev:
        if e["event"] == "click":
            clicks.setdefault(e["user_id"], []).append((e["ts"], e["item_id"]))
    users = s.column("user_id").to_numpy()
    hist_items = s.column("hist_item_ids").to_pylist()
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ts), size=400, replace=False):
        before = sorted(c for c in clicks.get(int(users[i]), []) if c[0] < ts[i])
        expect = [item for _, item in before][-50:]
        assert sorted(hist_items[i]) == sorted(expect)


def test_pairs_hard_negatives_are_clicked_not_bought(tiny_market: Path) -> None:
    pairs = pq.read_table(tiny_market / "data" / "pairs.parquet").to_pylist()
    ev = pq.read_table(tiny_market / "data" / "events.parquet").to_pylist()
    clicked: dict[int, set[int]] = {}
    bought: dict[int, set[int]] = {}
    for e in ev:
        if e["event"] == "click":
            clicked.setdefault(e["request_id"], set()).add(e["item_id"])
        if e["event"] == "purchase":
            bought.setdefault(e["request_id"], set()).add(e["item_id"])
    assert len(pairs) > 100 and any(p["hard_neg_item_ids"] for p in pairs)
    for p in pairs:
        assert p["pos_item_id"] in bought[p["request_id"]]
        assert set(p["hard_neg_item_ids"]) == clicked[p["request_id"]] - bought[p["request_id"]]
        assert (p["query_text"] is None) != (p["query_image"] is None)
        assert p["query_modality"] == ("image" if p["query_image"] else "text")
    assert {p["split"] for p in pairs} == {"train", "test"}


def test_list_sales_are_counted_strictly_before_the_request(tiny_market: Path) -> None:
    lists = pq.read_table(tiny_market / "data" / "lists.parquet").to_pylist()
    ev = pq.read_table(tiny_market / "data" / "events.parquet").to_pylist()
    buys: dict[int, list[int]] = {}
    for e in ev:
        if e["event"] == "purchase":
            buys.setdefault(e["item_id"], []).append(e["ts"])
    for row in lists[::37]:
        expect = [sum(t < row["ts"] for t in buys.get(i, [])) for i in row["item_ids"]]
        assert row["sales"] == expect
        assert row["positions"] == sorted(row["positions"])


def test_query_image_is_a_changed_photo_of_the_item(tiny_market: Path) -> None:
    items = pq.read_table(tiny_market / "data" / "items.parquet", columns=["item_id", "image"])
    pairs = pq.read_table(tiny_market / "data" / "pairs.parquet").to_pylist()
    ref = next(p["query_image"] for p in pairs if p["query_image"])
    src = int(ref.split(":")[1])
    img_bytes = items.column("image")[items.column("item_id").to_pylist().index(src)].as_py()
    a, b = render_query_image(ref, img_bytes), render_query_image(ref, img_bytes)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    from mmrank.data.io import decode_image
    assert not np.array_equal(np.asarray(a), np.asarray(decode_image(img_bytes)))


@needs_shared_data
def test_real_catalog_mode(tmp_path: Path) -> None:
    cfg = market_config(size="tiny", seed=1, n_items=1_000, n_users=500, n_impressions=5_000,
                        catalog=str(FASHION))
    man = generate_market(cfg, tmp_path)
    assert man["simulated"] is True and "real catalog" in man["source"]
    items = pq.read_table(tmp_path / "data" / "items.parquet")
    real = pq.read_table(FASHION, columns=["item_id", "title"])
    real_titles = dict(zip(real.column("item_id").to_pylist(), real.column("title").to_pylist()))
    for iid, title in zip(items.column("item_id").to_pylist()[:50], items.column("title").to_pylist()[:50]):
        assert real_titles[iid] == title  # titles (and photos) are used as they are
    assert "article_type" in items.column_names and "base_colour" in items.column_names
    assert man["counts"]["pairs"] > 0

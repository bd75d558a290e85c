"""Real data as a stranger brings it (issue 29): a shop in H&M's layout (tests/fixtures/hm_like.py: a
Parquet catalog with 10% of articles photographed, mostly one-purchase customers, repeated same-day
transactions, no sales_channel_id, a flat photo folder) imports from Parquet and from CSV, with flat and
nested photo folders, and runs through profile, pretrain, embed, search and ctr compare; its photos are
encoded at the size the profile printed. A plain ``ts, user_id, item_id, event`` log with impressions
and no request id imports (requests derived, and said so) and runs through pretrain, embed and ctr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from mmrank.testing.presets import FIXTURES, TINY_CONFIG, jpeg
from typer.testing import CliRunner

sys.path.insert(0, str(FIXTURES))
from hm_like import PHOTO_SIZE, article_ids, make_hm_like, photographed  # noqa: E402

torch.set_num_threads(2)

# the tiny settings, with the image size left to the catalog (the median side of its real photos)
CONFIG = "\n".join(line for line in TINY_CONFIG.splitlines() if "image_size" not in line).replace(
    "epochs: 2", "epochs: 1") + "\n"


def _cli(*args: object) -> str:
    from mmrank.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output


def _import(run: Path, root: Path, catalog: str, *extra: object) -> str:
    return _cli("data", "import", "--run", run, "--preset", "hm", "--items", root / f"articles.{catalog}",
                "--events", root / "transactions_train.csv", "--images", root / "images", *extra)


def test_hm_layouts_import_alike(tmp_path: Path) -> None:
    """Parquet + flat photos and CSV + nested photos give the same tables; the summary counts one
    rule for repeats, lists the default it took and the photos it found."""
    a = make_hm_like(tmp_path / "a", catalog="parquet", photos="flat")
    b = make_hm_like(tmp_path / "b", catalog="csv", photos="nested")
    out = _import(tmp_path / "ra", a, "parquet")
    _import(tmp_path / "rb", b, "csv")
    ta = pq.read_table(tmp_path / "ra" / "data" / "items.parquet")
    tb = pq.read_table(tmp_path / "rb" / "data" / "items.parquet")
    assert ta.column("image").equals(tb.column("image")) and ta.column("title").equals(tb.column("title"))
    ea = pq.read_table(tmp_path / "ra" / "data" / "events.parquet")
    assert ea.equals(pq.read_table(tmp_path / "rb" / "data" / "events.parquet"))
    m = json.loads((tmp_path / "ra" / "data" / "manifest.json").read_text())["import"]
    # every transaction is a click and a purchase, repeats of one day merged alike
    assert m["counts"]["clicks"] == m["counts"]["purchases"] and m["rates"]["purchase_per_click"] == 1.0
    merged = m["lists"]["repeats_merged"]
    assert merged["click"] == merged["purchase"] > 0
    assert m["items_without"]["image"] == 200 - len(photographed())
    assert m["photos"]["photos"] == len(photographed()) and m["photos"]["median_side"] == max(PHOTO_SIZE)
    assert "sales_channel_id" in m["defaults"] and "substitute (default sales_channel_id)" in out
    assert "merged: " in out and "(flat, 20 photos)" in out
    # the photographed articles hold their own photo, the rest the placeholder
    ids = ta.column("item_id").to_pylist()
    rows = {int(article_ids()[r]) for r in photographed()}
    paths = ta.column("image_path").to_pylist()
    assert {i for i, p in zip(ids, paths) if p} == rows


def test_unknown_items_counted_by_source_row(tmp_path: Path) -> None:
    """A transaction naming an unknown article (a click and a purchase) counts once, by its row; the
    summary lists the row; ``--strict`` stops at it (tests/test_import_errors.py)."""
    from mmrank.data.import_summary import format_summary
    from mmrank.data.importer import import_data

    root = make_hm_like(tmp_path / "src")
    tx = root / "transactions_train.csv"
    lines = tx.read_text().splitlines()
    for at in (9, 4):  # file lines: data rows 3 and 9 once both are in
        lines.insert(at, f"2020-09-03,{'e' * 64},\"0999999999\",0.02")
    tx.write_text("\n".join(lines) + "\n")
    s = import_data(tmp_path / "run", preset="hm", items=root / "articles.parquet", events=tx,
                    images=root / "images")
    assert s["events_naming_unknown_items"] == {str(tx): 2} and s["unknown_item_rows"] == {str(tx): [3, 9]}
    assert f"2 in {tx} (rows 3, 9)" in format_summary(s)


def test_price_is_point_in_time(tmp_path: Path) -> None:
    """An article's price is the mean of its transactions before the split: a test-period price
    never reaches it."""
    root = make_hm_like(tmp_path / "src")
    _import(tmp_path / "run", root, "parquet")
    data = tmp_path / "run" / "data"
    split = json.loads((data / "manifest.json").read_text())["split_ts"]
    tx = pcsv.read_csv(root / "transactions_train.csv",
                       convert_options=pcsv.ConvertOptions(column_types={"article_id": "string"}))
    days = pc.cast(tx.column("t_dat"), "timestamp[s]").cast("int64").to_numpy()
    art = np.array([int(a) for a in tx.column("article_id").to_pylist()])
    price = tx.column("price").to_numpy()
    items = pq.read_table(data / "items.parquet", columns=["item_id", "price"])
    for i, p in zip(items.column("item_id").to_pylist(), items.column("price").to_numpy()):
        paid = price[(art == i) & (days < split)]
        assert p == pytest.approx(paid.mean() if len(paid) else 0.0)
    lists = pq.read_table(data / "lists.parquet", columns=["ts", "item_ids", "prices"]).to_pylist()
    assert len(lists) > 100
    seen_zero = seen_paid = 0
    for row in lists[::7]:
        for i, p in zip(row["item_ids"], row["prices"]):
            paid = price[(art == i) & (days < row["ts"])]
            assert p == pytest.approx(paid.mean() if len(paid) else 0.0)
            seen_zero += not len(paid)
            seen_paid += bool(len(paid))
    assert seen_zero and seen_paid  # both cases were checked


@pytest.mark.slow
def test_hm_like_runs_to_ctr_at_the_profiled_image_size(tmp_path: Path) -> None:
    root = make_hm_like(tmp_path / "src", catalog="parquet", photos="flat")
    run = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG)
    _import(run, root, "parquet")
    prof = _cli("data", "profile", "--run", run)
    profile = json.loads((run / "data" / "profile.json").read_text())
    side = profile["items"]["photo_side"]["median"]
    assert side == max(PHOTO_SIZE) and f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} px median" in prof
    assert profile["pairs"]["test"] < 500 and "test pairs (< 500)" in prof
    out = _cli("pretrain", "--run", run, "--config", cfg)
    assert f"image size {side} px: the median side of 20 real photos" in out
    metrics = json.loads((run / "encoder" / "metrics.json").read_text())
    assert metrics["image_size"] == side  # not the 32 px placeholder's
    assert f"image_size: {side}" in (run / "config.yaml").read_text()
    prof = _cli("data", "profile", "--run", run)
    assert "acc@5 text:" in prof and "95% interval" in prof
    _cli("embed", "--run", run, "--config", cfg)
    lines = _cli("search", "--run", run, "--text", "Dress 7", "--k", "5").strip().splitlines()
    assert len(lines) == 5
    _cli("ctr", "compare", "--run", run, "--config", cfg)
    assert (run / "ctr" / "compare.json").exists()


def _plain_log(tmp_path: Path) -> tuple[Path, Path]:
    """20 items with photos; 60 users who each see pages of 4 items (logged a second apart) and click,
    cart or buy some of them later."""
    rng = np.random.default_rng(1)
    for i in range(20):
        jpeg(tmp_path / "images" / f"{i}.jpg", (12 * i, 100, 200 - 9 * i))
    (tmp_path / "items.csv").write_text("item_id,title,category\n" + "".join(
        f"{i},thing {i} of kind {i % 4},kind{i % 4}\n" for i in range(20)))
    rows = ["ts,user_id,item_id,event"]
    for u in range(60):
        for s in range(3):
            t = 1_600_000_000 + 86400 * s + 600 * u
            shown = rng.choice(20, 4, replace=False)
            rows += [f"{t + j},{u},{i},impression" for j, i in enumerate(shown)]  # logged a second apart
            hit = [int(i) for i in shown if (i % 4) == (u % 4)] or [int(shown[0])]
            rows.append(f"{t + 30},{u},{hit[0]},click")
            if len(hit) > 1:
                rows.append(f"{t + 40},{u},{hit[1]},click")
            if rng.random() < 0.3:
                rows.append(f"{t + 60},{u},{hit[0]},cart")
                rows.append(f"{t + 90},{u},{hit[0]},purchase")
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "items.csv", tmp_path / "log.csv"


def test_plain_log_gets_requests_derived(tmp_path: Path) -> None:
    from mmrank.data.importer import import_data
    from mmrank.data.config import DataConfig

    items, log = _plain_log(tmp_path)
    s = import_data(tmp_path / "run", items=items, events=log, cfg=DataConfig(session_gap=120))
    assert "requests" in s["substitutes"] and "within 120 s" in s["substitutes"]["requests"]
    assert s["counts"]["requests"] == 180 and s["lists"]["labels_without_impression"] == 0
    ev = pq.read_table(tmp_path / "run" / "data" / "events.parquet")
    clicks = ev.filter(pc.equal(ev.column("event"), "click"))
    imps = ev.filter(pc.equal(ev.column("event"), "impression"))
    shown = set(zip(imps.column("request_id").to_pylist(), imps.column("item_id").to_pylist()))
    assert all(k in shown for k in zip(clicks.column("request_id").to_pylist(), clicks.column("item_id").to_pylist()))
    # without a gap, a request is one user and one time: each impression its own request; a label
    # still joins the latest request that showed its item
    s0 = import_data(tmp_path / "run0", items=items, events=log)
    assert s0["counts"]["requests"] == 720 and s0["lists"]["labels_without_impression"] == 0
    assert "data.session_gap 0" in s0["substitutes"]["requests"]


@pytest.mark.slow
def test_plain_log_runs_to_ctr(tmp_path: Path) -> None:
    items, log = _plain_log(tmp_path)
    run = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG + "data: {session_gap: 120}\n")
    out = _cli("data", "import", "--run", run, "--items", items, "--events", log, "--config", cfg)
    assert "substitute (requests): the log has no request ids" in out
    _cli("pretrain", "--run", run, "--config", cfg)
    _cli("embed", "--run", run, "--config", cfg)
    _cli("ctr", "compare", "--run", run, "--config", cfg)
    assert (run / "ctr" / "compare.json").exists()

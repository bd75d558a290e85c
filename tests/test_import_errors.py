"""A bad row stops the import with one line naming file, row and column, exit code 2, and the run
directory exactly as it was; events naming unknown items are kept out and counted."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrank.data.importer import import_data
from mmrank.errors import ConfigError, DataError
from mmrank.testing.presets import FIXTURES, run_mmrank, snapshot

TAOBAO = FIXTURES / "taobao" / "UserBehavior.csv"


def _bad_copy(tmp_path: Path, line: int, text: str) -> Path:
    rows = TAOBAO.read_text().splitlines()
    rows[line] = text
    p = tmp_path / "UserBehavior.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def test_bad_row_names_file_row_column_exits_2_and_leaves_run_unchanged(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok = run_mmrank("data", "import", "--run", run, "--preset", "taobao", "--events", TAOBAO)
    assert ok.returncode == 0, ok.stderr
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    bad = _bad_copy(tmp_path, 3, "1,3830808,4181361,pv,yesterday")
    res = run_mmrank("data", "import", "--run", run, "--preset", "taobao", "--events", bad, "--replace")
    assert res.returncode == 2
    assert res.stderr.strip() == (f"error: {bad}: row 3, column 'timestamp': expected an integer, "
                                  f"got 'yesterday'")
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UserBehavior.csv", "run"]  # no temp left


def test_failure_after_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a failure in the last step (derived tables) leaves no run and no temporary directory."""
    import mmrank.data.samples as samples

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise DataError("derived tables failed", file="x")

    monkeypatch.setattr(samples, "build_derived", boom)
    with pytest.raises(DataError, match="derived tables failed"):
        import_data(tmp_path / "run", preset="taobao", events=TAOBAO)
    assert list(tmp_path.iterdir()) == []


def test_existing_data_needs_replace(tmp_path: Path) -> None:
    run = tmp_path / "run"
    import_data(run, preset="taobao", events=TAOBAO)
    before = snapshot(run)
    with pytest.raises(DataError, match="--replace"):
        import_data(run, preset="taobao", events=TAOBAO)
    assert snapshot(run) == before


@pytest.mark.parametrize("line, text, column, message", [
    (5, "1,,2520377,pv,1511596146", "item_id", "empty where a value is required"),
    (7, "1,230380,411153,like,1511644942", "behavior_type", "unknown event value 'like'"),
    (2, "1,2576651,149192,pv,99999999999", "timestamp", "out of range"),
])
def test_each_bad_cell_is_named(tmp_path: Path, line: int, text: str, column: str, message: str) -> None:
    bad = _bad_copy(tmp_path, line, text)
    with pytest.raises(DataError) as err:
        import_data(tmp_path / "run", preset="taobao", events=bad)
    e = err.value
    assert (e.file, e.row, e.column) == (str(bad), line, column) and message in e.detail
    assert not (tmp_path / "run").exists()


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


def _catalog(tmp_path: Path, bad_image_row: int | None = None, dup_row: int | None = None) -> Path:
    (tmp_path / "photos").mkdir(exist_ok=True)
    ids, blobs, paths = [], [], []
    for i in range(6):
        ids.append(100 + i)
        if i % 2 == 0:
            blobs.append(_jpeg((40 * i, 0, 0)))
            paths.append(None)
        else:
            name = f"p{i}.jpg"
            data = b"not a jpeg" if i == bad_image_row else _jpeg((0, 40 * i, 0))
            (tmp_path / "photos" / name).write_bytes(data)
            blobs.append(None)
            paths.append(f"photos/{name}")
    if dup_row is not None:
        ids[dup_row] = ids[0]
    t = pa.table({"sku": pa.array(ids, pa.int64()), "name": [f"thing {i}" for i in range(6)],
                  "photo": pa.array(blobs, pa.binary()), "photo_file": pa.array(paths, pa.string()),
                  "cat": ["a", "b"] * 3, "colour": ["red"] * 6})
    p = tmp_path / "catalog.parquet"
    pq.write_table(t, p)
    return p


MAPPING = """\
items:
  columns: {item_id: sku, title: name, image: photo, image_path: photo_file, category: cat}
events:
  columns: {ts: when, user_id: who, item_id: sku, event: what}
  event_values: {view: click, order: purchase, wish: null}
"""


def _events(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "log.csv"
    p.write_text("when,who,sku,what\n" + "\n".join(rows) + "\n")
    return p


LOG = ["1000,u1,100,view", "1100,u1,101,view", "1200,u2,102,view", "1300,u2,102,order",
       "1400,u1,999,view", "1500,u3,103,wish", "1600,u3,104,view", "1700,u3,105,view",
       "1800,u1,104,view", "1900,u2,105,view"]


def test_mapping_mixed_images_unknown_items_counted(tmp_path: Path) -> None:
    m = tmp_path / "map.yaml"
    m.write_text(MAPPING)
    s = import_data(tmp_path / "run", items=_catalog(tmp_path), events=_events(tmp_path, LOG), mapping=m)
    assert s["events_naming_unknown_items"] == {str(tmp_path / "log.csv"): 1}
    assert s["unknown_item_rows"] == {str(tmp_path / "log.csv"): [4]}  # LOG[4] names item 999
    assert s["ignored"] == {"'wish' rows in log.csv": 1}
    assert s["counts"]["clicks"] == 7 and s["counts"]["purchases"] == 1
    items = pq.read_table(tmp_path / "run" / "data" / "items.parquet")
    assert items.column("colour").to_pylist() == ["red"] * 6  # free attributes are kept
    from mmrank.data.io import read_items

    got = read_items(tmp_path / "run" / "data" / "items.parquet", ["item_id"])
    raw = pq.read_table(tmp_path / "catalog.parquet")
    for i in range(6):
        want = raw.column("photo")[i].as_py() or (tmp_path / raw.column("photo_file")[i].as_py()).read_bytes()
        assert got.column("image")[i].as_py() == want


def test_bad_image_and_duplicate_id_are_named(tmp_path: Path) -> None:
    m = tmp_path / "map.yaml"
    m.write_text(MAPPING)
    with pytest.raises(DataError) as err:
        import_data(tmp_path / "r1", items=_catalog(tmp_path, bad_image_row=3), events=_events(tmp_path, LOG),
                    mapping=m)
    assert (err.value.file, err.value.row, err.value.column) == (str(tmp_path / "catalog.parquet"), 3, "photo_file")
    assert "undecodable image" in str(err.value)
    cat = _catalog(tmp_path)
    (tmp_path / "photos" / "p5.jpg").unlink()
    with pytest.raises(DataError) as err:
        import_data(tmp_path / "r3", items=cat, events=_events(tmp_path, LOG), mapping=m)
    assert (err.value.row, err.value.column) == (5, "photo_file") and "no such image file" in str(err.value)
    with pytest.raises(DataError) as err:
        import_data(tmp_path / "r2", items=_catalog(tmp_path, dup_row=4), events=_events(tmp_path, LOG),
                    mapping=m)
    assert (err.value.row, err.value.column) == (4, "sku") and "duplicate item id 100" in str(err.value)


def test_bad_mapping_is_named(tmp_path: Path) -> None:
    m = tmp_path / "map.yaml"
    m.write_text("events:\n  columns: {timestamp: t}\n")
    with pytest.raises(ConfigError, match="unknown mmrank column 'timestamp'"):
        import_data(tmp_path / "run", events=_events(tmp_path, LOG), mapping=m)
    with pytest.raises(ConfigError, match="unknown preset 'ebay'"):
        import_data(tmp_path / "run", events=_events(tmp_path, LOG), preset="ebay")


def test_mapping_wide_log_with_label_columns(tmp_path: Path) -> None:
    """One row per impression with 0/1 label columns, in its own column names and ISO times."""
    m = tmp_path / "map.yaml"
    m.write_text(MAPPING.replace("event: what}\n  event_values: {view: click, order: purchase, wish: null}",
                                 "request_id: page, position: slot}\n  ts_format: iso\n"
                                 "  labels: {click: clicked, purchase: bought}"))
    rows = ["when,who,sku,page,slot,clicked,bought"]
    for r in range(6):
        for s in range(3):
            rows.append(f"2024-03-0{1 + r}T10:00:00Z,u{r % 2},{100 + (r + s) % 6},{r},{s},{int(s == r % 3)},"
                        f"{int(s == r % 3 and r % 2)}")
    log = tmp_path / "wide.csv"
    log.write_text("\n".join(rows) + "\n")
    s = import_data(tmp_path / "run", items=_catalog(tmp_path), events=log, mapping=m)
    assert (s["counts"]["impressions"], s["counts"]["clicks"], s["counts"]["purchases"]) == (18, 6, 3)
    assert s["span"]["first"] == "2024-03-01T10:00:00+00:00" and "impressions" not in s["substitutes"]
    samples = pq.read_table(tmp_path / "run" / "data" / "ctr_samples.parquet")
    assert samples.num_rows == 18 and sum(samples.column("label").to_pylist()) == 6
    rows[4] = "2024-03-02T10:00:00Z,u1,101,1,0,maybe,0"
    log.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        import_data(tmp_path / "run2", items=_catalog(tmp_path), events=log, mapping=m)
    assert (err.value.row, err.value.column) == (3, "clicked")


def _hm_case(root: Path, case: str) -> tuple[list[object], str, int | None, str | None, str]:
    """Break the H&M-like shop in one way: (import arguments, file named, row, column, message)."""
    import pyarrow.csv as pcsv
    from hm_like import article_ids, photographed

    items, tx, images = root / "articles.parquet", root / "transactions_train.csv", root / "images"
    args: list[object] = ["--items", items, "--events", tx, "--images", images]
    if case == "missing image folder":
        args[-1] = root / "photos"
        return args, str(root / "photos"), None, None, f"no such images folder: expected photos named by item id"
    if case == "empty image folder":
        (root / "empty").mkdir()
        args[-1] = root / "empty"
        return args, str(root / "empty"), None, None, f"looked for e.g. {article_ids()[0]}.jpg (it has no photos)"
    if case == "truncated photo":
        r = photographed()[3]
        p = images / f"{article_ids()[r]}.jpg"
        p.write_bytes(p.read_bytes()[:200])
        return args, str(items), r, "image", "undecodable image"
    if case == "bad number in a Parquet file":
        t = pq.read_table(items)
        ids = t.column("article_id").to_pylist()
        ids[7] = "07x"
        pq.write_table(t.set_column(0, "article_id", pa.array(ids)), items)
        return args, str(items), 7, "article_id", "expected an integer, got '07x'"
    if case == "not a Parquet file":
        items.write_bytes(b"PAR1" + b"\0" * 40)
        return args, str(items), None, None, "not a readable Parquet file"
    if case == "bad price":
        t = pcsv.read_csv(tx, convert_options=pcsv.ConvertOptions(column_types={"article_id": pa.string(),
                                                                                "price": pa.string()}))
        price = t.column("price").to_pylist()
        price[11] = "12,5 EUR"
        pcsv.write_csv(t.set_column(3, "price", pa.array(price)), tx)
        return args, str(tx), 11, "price", "expected a number, got '12,5 EUR'"
    assert case == "unknown item (--strict)"
    lines = tx.read_text().splitlines()
    lines.insert(6, f"2020-09-03,{'f' * 64},\"0999999999\",0.02")
    tx.write_text("\n".join(lines) + "\n")
    return args + ["--strict"], str(tx), 5, "article_id", "the item is not in the catalog (--strict"


@pytest.mark.parametrize("case", ["missing image folder", "empty image folder", "truncated photo",
                                  "bad number in a Parquet file", "not a Parquet file", "bad price",
                                  "unknown item (--strict)"])
def test_bad_input_is_one_line_exit_2_and_leaves_run_unchanged(tmp_path: Path, case: str,
                                                               capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad input of a real-shaped shop: one line naming the file (and the row and column of a
    cell), exit 2, and the run exactly as the last good import left it. (The entry point runs in this
    process: ``mmrank.cli.main``, as the console script calls it.)"""
    import sys

    from mmrank.cli import main

    sys.path.insert(0, str(FIXTURES))
    from hm_like import make_hm_like

    good = make_hm_like(tmp_path / "good")
    run = tmp_path / "run"
    import_data(run, preset="hm", items=good / "articles.parquet", events=good / "transactions_train.csv",
                images=good / "images")
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    args, file, row, column, message = _hm_case(make_hm_like(tmp_path / "bad"), case)
    monkeypatch.setattr(sys, "argv", ["mmrank", "data", "import", "--run", str(run), "--preset", "hm",
                                      "--replace", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    where = ", ".join(p for p in ((f"row {row}" if row is not None else ""),
                                  (f"column '{column}'" if column else "")) if p)
    assert err.startswith(f"error: {file}: " + (f"{where}: " if where else "")), err
    assert message in err, err
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "run"]  # no temp left

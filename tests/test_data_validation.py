"""Bad input gives one clear line naming the file, row and column; the CLI exits with code 2."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrank.data.io import iter_batches, read_table, validate_events, validate_items
from mmrank.errors import DataError


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def _items(n: int = 5, **replace: list) -> pa.Table:
    cols = {"item_id": list(range(10, 10 + n)), "title": [f"red shirt {i}" for i in range(n)],
            "image": [_jpeg()] * n, "category": ["shirt"] * n, "price": [9.5] * n,
            "created_at": [0] * n}
    cols.update(replace)
    return pa.table(cols)


def _write(tmp_path: Path, table: pa.Table, name: str = "items.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmrank.cli", *args], capture_output=True, text=True)


def test_good_items_pass(tmp_path: Path) -> None:
    ids = validate_items(_write(tmp_path, _items()))
    assert ids.tolist() == [10, 11, 12, 13, 14]


def test_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path, _items().drop_columns(["price"]))
    with pytest.raises(DataError) as err:
        validate_items(path)
    assert str(path) in str(err.value) and "column 'price'" in str(err.value) and "row" in str(err.value)


def test_string_in_numeric_column_names_the_row(tmp_path: Path) -> None:
    path = _write(tmp_path, _items(price=["9.5", "10", "cheap", "3", "4"]))
    with pytest.raises(DataError) as err:
        validate_items(path)
    msg = str(err.value)
    assert f"{path}: row 2, column 'price'" in msg and "'cheap'" in msg


def test_nan_and_null(tmp_path: Path) -> None:
    path = _write(tmp_path, _items(price=[1.0, 2.0, 3.0, float("nan"), 5.0]))
    with pytest.raises(DataError, match=r"row 3, column 'price': NaN"):
        validate_items(path)
    path = _write(tmp_path, _items(title=["a", "b", None, "d", "e"]), "null.parquet")
    with pytest.raises(DataError, match=r"row 2, column 'title'"):
        validate_items(path)


def test_corrupt_image_and_duplicate_ids(tmp_path: Path) -> None:
    imgs = [_jpeg()] * 5
    imgs[4] = b"\xff\xd8\xff not a jpeg"
    with pytest.raises(DataError, match=r"row 4, column 'image': undecodable image"):
        validate_items(_write(tmp_path, _items(image=imgs)))
    with pytest.raises(DataError, match=r"row 3, column 'item_id': duplicate item_id 11"):
        validate_items(_write(tmp_path, _items(item_id=[10, 11, 12, 11, 14]), "dup.parquet"))


def test_row_numbers_count_across_batches(tmp_path: Path) -> None:
    n = 300
    prices = [1.0] * n
    prices[250] = float("nan")
    path = _write(tmp_path, _items(n, price=prices))
    with pytest.raises(DataError, match=r"row 250, column 'price'"):
        list(iter_batches(path, "items", batch_size=64))


def test_events_with_unknown_item_or_event(tmp_path: Path) -> None:
    ids = np.array([10, 11, 12])
    ev = pa.table({"ts": [1, 2, 3], "user_id": [1, 1, 2], "item_id": [10, 99, 12],
                   "request_id": [0, 0, 1], "position": [0, 1, 0],
                   "event": ["impression", "impression", "click"], "query_text": ["a", "a", None],
                   "query_image": [None, None, "qi-0a1b2c3d"], "region": [0, 0, 1]})
    with pytest.raises(DataError, match=r"row 1, column 'item_id': unknown item_id 99"):
        validate_events(_write(tmp_path, ev, "events.parquet"), ids)
    ev2 = ev.set_column(2, "item_id", pa.array([10, 11, 12])).set_column(
        5, "event", pa.array(["impression", "view", "click"]))
    with pytest.raises(DataError, match=r"row 1, column 'event'"):
        validate_events(_write(tmp_path, ev2, "events2.parquet"), ids)
    assert read_table(_write(tmp_path, ev.set_column(2, "item_id", pa.array([10, 11, 12])), "ok.parquet"),
                      "events").num_rows == 3


@pytest.mark.parametrize("case", ["missing", "string", "image"])
def test_cli_prints_one_line_and_exits_2(tmp_path: Path, case: str) -> None:
    table = {"missing": _items().drop_columns(["created_at"]),
             "string": _items(price=["1", "x", "2", "3", "4"]),
             "image": _items(image=[_jpeg(), _jpeg(), b"garbage", _jpeg(), _jpeg()])}[case]
    path = _write(tmp_path, table)
    res = _cli("data", "validate", str(path))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert str(path) in lines[0] and "row" in lines[0] and "column" in lines[0]


def test_cli_market_generate_rejects_bad_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "market.yaml"
    cfg.write_text("n_itemz: 10\n")
    res = _cli("market", "generate", "--run", str(tmp_path / "r"), "--config", str(cfg))
    assert res.returncode == 2 and "unknown key 'n_itemz'" in res.stderr
    cfg.write_text("n_items: lots\n")
    res = _cli("market", "generate", "--run", str(tmp_path / "r"), "--config", str(cfg))
    assert res.returncode == 2 and "'n_items'" in res.stderr


def test_data_build_rebuilds_derived_tables_from_events(tiny_run: Path) -> None:
    import json

    data = tiny_run / "data"
    before = {n: pq.read_table(data / f"{n}.parquet") for n in ("pairs", "ctr_samples", "lists")}
    for n in before:
        (data / f"{n}.parquet").unlink()
    man = json.loads((data / "manifest.json").read_text())
    res = _cli("data", "build", "--run", str(tiny_run), "--split-ts", str(man["split_ts"]),
               "--start-ts", str(man["start_ts"]))
    assert res.returncode == 0, res.stderr
    for n, table in before.items():
        assert pq.read_table(data / f"{n}.parquet").equals(table)

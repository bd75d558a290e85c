"""Item embeddings as an import (issue 25, part 3): `mmrank data import --item-vectors` and the
``mmrec`` / ``mmctr`` presets. Each fixture imports and runs through `ctr compare` and `search` without
pre-training; every vector survives the round trip; each bad file stops the import with its file,
row and field named, and leaves the run directory as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mmrank.data.importer import import_data
from mmrank.errors import DataError
from mmrank.lineage import digest_of
from mmrank.store.backends import open_table
from mmrank.testing.presets import FIXTURES, TINY_CONFIG, run_mmrank

torch.set_num_threads(1)

MMCTR = FIXTURES / "mmctr"
PRESET_EVENTS = {"mmrec": FIXTURES / "mmrec" / "baby", "mmctr": MMCTR}
N_MMCTR = 40  # items 1..40 in the MMCTR fixture


def _cli(*args: object) -> tuple[int, str]:
    """In this process: (exit code, output); an MMRankError (which `mmrank` prints as one line and
    exits 2 with, see test_cli_error_is_one_line_and_exit_2) comes back as (2, its message)."""
    from mmrank.cli import app
    from mmrank.errors import MMRankError

    res = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(res.exception, MMRankError):
        return 2, str(res.exception)
    return res.exit_code, res.output


def _vectors_file(path: Path, ids: list, vecs: list | np.ndarray, *, id_type: pa.DataType = pa.int64(),
                  value_type: pa.DataType = pa.float32()) -> Path:
    pq.write_table(pa.table({"item_id": pa.array(ids, id_type),
                             "embedding": pa.array([None if v is None else list(v) for v in vecs],
                                                   pa.list_(value_type))}), path)
    return path


def _rand(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("preset", ["mmrec", "mmctr"])
def test_preset_imports_and_runs_ctr_compare_and_search(preset: str, tmp_path: Path) -> None:
    run, cfg = tmp_path / "run", tmp_path / "tiny.yaml"
    cfg.write_text(TINY_CONFIG.replace("strategies: [id, simtier, make]", "strategies: [id, simtier]"))
    code, out = _cli("data", "import", "--run", run, "--preset", preset, "--events", PRESET_EVENTS[preset])
    assert code == 0, out
    s = json.loads((run / "data" / "manifest.json").read_text())["import"]
    v = s["vectors"]
    files = sorted((PRESET_EVENTS[preset]).glob("*_feat.npy")) if preset == "mmrec" else [MMCTR / "item_emb.parquet"]
    assert v["version"] == "import-" + digest_of(files)  # the version is the files' hash
    assert v["items_without_vector"] == 0 and v["rows"] == s["counts"]["items"]
    assert f"item vectors: {v['rows']} x {v['dim']}" in out
    assert (v["dim"], v["rows"]) == ((16 + 8, 36) if preset == "mmrec" else (128, N_MMCTR))
    table = open_table(run / "embeddings")
    assert table.version == v["version"] and len(table) == v["rows"]
    table.close()
    assert not (run / "encoder").exists()  # no pre-training anywhere

    code, out = _cli("ctr", "compare", "--run", run, "--config", cfg)
    assert code == 0, out
    res = json.loads((run / "ctr" / "compare.json").read_text())
    assert f"embeddings:{v['version']}" in json.dumps(res)
    assert {"id", "simtier"} <= set(json.dumps(res).split('"'))

    item = 3
    code, out = _cli("search", "--run", run, "--item", item, "--k", 5, "--json")
    assert code == 0, out
    hits = json.loads(out)["results"]
    assert len(hits) == 5 and item not in [h["item_id"] for h in hits]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    code, out = _cli("search", "--run", run, "--text", "red shirt")
    assert code == 2 and "imported" in out and "--vector" in out


def test_mmrec_vectors_are_the_fused_feature_files(tmp_path: Path) -> None:
    """Row i of image_feat.npy and text_feat.npy is item i: each L2-normalised, concatenated / sqrt(2)."""
    run = tmp_path / "run"
    import_data(run, preset="mmrec", events=PRESET_EVENTS["mmrec"])
    img = np.load(PRESET_EVENTS["mmrec"] / "image_feat.npy")
    txt = np.load(PRESET_EVENTS["mmrec"] / "text_feat.npy")
    want = np.concatenate([img / np.linalg.norm(img, axis=1, keepdims=True),
                           txt / np.linalg.norm(txt, axis=1, keepdims=True)], axis=1) / np.sqrt(2)
    with open_table(run / "embeddings") as t:
        got = t.get(np.arange(len(img)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # search by vector: item 0's own vector finds item 0 first
    code, out = _cli("search", "--run", run, "--vector", ",".join(map(str, got[0])), "--k", 3, "--json")
    assert code == 0, out
    assert json.loads(out)["results"][0]["item_id"] == 0


def test_parquet_round_trip_keeps_every_vector(tmp_path: Path) -> None:
    """Every row of the file is a vector of the table, bit for bit; items without one are counted and
    named as a substitute, and get no table row."""
    ids = list(range(1, N_MMCTR - 2))  # items 38..40 without a vector
    vecs = _rand(len(ids), 16, seed=1)
    f = _vectors_file(tmp_path / "emb.parquet", ids, vecs)
    run = tmp_path / "run"
    s = import_data(run, preset="mmctr", events=MMCTR, item_vectors=f)
    assert s["vectors"]["items_without_vector"] == 3 and "vectors" in s["substitutes"]
    with open_table(run / "embeddings") as t:
        assert t.version == "import-" + digest_of([f])
        np.testing.assert_array_equal(t.ids(), np.asarray(ids))
        np.testing.assert_array_equal(t.get(np.asarray(ids)), vecs)
        assert not t.contains(np.array([38, 39, 40])).any()
    from mmrank.ctr.representations import item_vectors

    got_ids, got, source = item_vectors(run)
    assert source == f"embeddings:import-{digest_of([f])}"
    assert not got[np.isin(got_ids, [38, 39, 40])].any()  # the zero 'unknown' vector
    row = int(np.flatnonzero(got_ids == 5)[0])
    np.testing.assert_allclose(got[row], vecs[4] / np.linalg.norm(vecs[4]), rtol=1e-6)


def test_npy_with_id_file_and_in_catalog_order(tmp_path: Path) -> None:
    vecs = _rand(N_MMCTR, 6, seed=2)
    order = list(range(N_MMCTR, 0, -1))  # rows name items 40, 39, ..., 1
    np.save(tmp_path / "emb.npy", vecs)
    (tmp_path / "ids.txt").write_text("\n".join(map(str, order)) + "\n")
    run = tmp_path / "run"
    s = import_data(run, preset="mmctr", events=MMCTR, item_vectors=tmp_path / "emb.npy",
                    vector_ids=tmp_path / "ids.txt")
    assert s["vectors"]["version"] == "import-" + digest_of([tmp_path / "emb.npy", tmp_path / "ids.txt"])
    with open_table(run / "embeddings") as t:
        np.testing.assert_array_equal(t.get(np.asarray(order)), vecs)
    # no id file: row i is the catalog's row i (item_info.parquet's order: items 1..40)
    run2 = tmp_path / "run2"
    s = import_data(run2, preset="mmctr", events=MMCTR, item_vectors=tmp_path / "emb.npy")
    assert "catalog" in s["vectors"]["order"]
    with open_table(run2 / "embeddings") as t:
        np.testing.assert_array_equal(t.get(np.arange(1, N_MMCTR + 1)), vecs)


def _bad(tmp_path: Path, **kw: object) -> DataError:
    run = tmp_path / "run"
    with pytest.raises(DataError) as err:
        import_data(run, preset="mmctr", events=MMCTR, **kw)
    assert not run.exists()  # nothing written: the vectors are checked before the run is touched
    return err.value


def test_dimension_mismatch_names_the_row(tmp_path: Path) -> None:
    vecs = [list(v) for v in _rand(N_MMCTR, 8)]
    vecs[6] = vecs[6][:5]
    f = _vectors_file(tmp_path / "e.parquet", list(range(1, N_MMCTR + 1)), vecs)
    e = _bad(tmp_path, item_vectors=f)
    assert (e.file, e.row, e.column) == (str(f), 6, "embedding")
    assert "5 values, row 0 has 8" in str(e)


@pytest.mark.parametrize("value,word", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_nan_and_inf_name_the_row(tmp_path: Path, value: float, word: str) -> None:
    vecs = _rand(N_MMCTR, 8)
    vecs[11, 2] = value
    f = _vectors_file(tmp_path / "e.parquet", list(range(1, N_MMCTR + 1)), vecs)
    e = _bad(tmp_path, item_vectors=f)
    assert (e.file, e.row, e.column) == (str(f), 11, "embedding") and word in str(e) and "value 2" in str(e)
    np.save(tmp_path / "e.npy", vecs)
    e = _bad(tmp_path, item_vectors=tmp_path / "e.npy")
    assert (e.file, e.row) == (str(tmp_path / "e.npy"), 11) and word in str(e)


def test_unknown_ids_are_named_and_counted(tmp_path: Path) -> None:
    ids = list(range(1, N_MMCTR + 1)) + [901, 902, 903, 904, 905, 906, 907]
    f = _vectors_file(tmp_path / "e.parquet", ids, _rand(len(ids), 4))
    e = _bad(tmp_path, item_vectors=f)
    assert (e.file, e.row, e.column) == (str(f), N_MMCTR, "item_id")
    assert "7 ids not in the catalog ('901', '902', '903', '904', '905', ...)" in str(e)


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    ids = list(range(1, N_MMCTR + 1))
    ids[20] = 4
    f = _vectors_file(tmp_path / "e.parquet", ids, _rand(N_MMCTR, 4))
    e = _bad(tmp_path, item_vectors=f)
    assert (e.file, e.row, e.column) == (str(f), 20, "item_id") and "first at row 3" in str(e)
    np.save(tmp_path / "e.npy", _rand(3, 4))
    (tmp_path / "ids.txt").write_text("1\n2\n1\n")
    e = _bad(tmp_path, item_vectors=tmp_path / "e.npy", vector_ids=tmp_path / "ids.txt")
    assert (e.file, e.row) == (str(tmp_path / "ids.txt"), 2) and "duplicate id '1'" in str(e)


def test_file_shape_errors(tmp_path: Path) -> None:
    """A missing column, a missing vector, an id file of the wrong length, a .npy that is not a
    matrix, and row-order vectors whose count is not the catalog's."""
    f = _vectors_file(tmp_path / "e.parquet", [1, 2], _rand(2, 4))
    e = _bad(tmp_path, item_vectors=f, vector_column="item_emb_d128")
    assert e.column == "item_emb_d128" and "the file has: item_id, embedding" in str(e)
    g = _vectors_file(tmp_path / "g.parquet", [1, 2, 3], [[1.0, 2.0], None, [3.0, 4.0]])
    e = _bad(tmp_path, item_vectors=g)
    assert (e.row, e.column) == (1, "embedding") and "no vector" in str(e)
    np.save(tmp_path / "m.npy", _rand(3, 4))
    (tmp_path / "ids.txt").write_text("1\n2\n")
    e = _bad(tmp_path, item_vectors=tmp_path / "m.npy", vector_ids=tmp_path / "ids.txt")
    assert e.file == str(tmp_path / "ids.txt") and "2 ids for 3 vector rows" in str(e)
    np.save(tmp_path / "v.npy", np.zeros(5, np.float32))
    e = _bad(tmp_path, item_vectors=tmp_path / "v.npy")
    assert "expected a matrix" in str(e)
    e = _bad(tmp_path, item_vectors=tmp_path / "m.npy")
    assert "3 vector rows but the catalog has 40 items" in str(e)


def test_cli_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    vecs = _rand(N_MMCTR, 4)
    vecs[0, 0] = np.nan
    f = _vectors_file(tmp_path / "e.parquet", list(range(1, N_MMCTR + 1)), vecs)
    res = run_mmrank("data", "import", "--run", tmp_path / "run", "--preset", "mmctr", "--events", MMCTR,
                     "--item-vectors", f)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"error: {f}: row 0, column 'embedding': value 0 of the vector is NaN")


def test_ids_are_read_as_the_catalog_reads_them(tmp_path: Path) -> None:
    """Text ids in the vector file match integer catalog ids, zero padding or not ('007' is item 7)."""
    ids = [f"{i:03d}" for i in range(1, N_MMCTR + 1)]
    vecs = _rand(N_MMCTR, 4, seed=3)
    f = _vectors_file(tmp_path / "e.parquet", ids, vecs, id_type=pa.string())
    run = tmp_path / "run"
    import_data(run, preset="mmctr", events=MMCTR, item_vectors=f)
    with open_table(run / "embeddings") as t:
        np.testing.assert_array_equal(t.get(np.array([7])), vecs[6:7])


def test_a_redis_run_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "embeddings").mkdir(parents=True)
    (run / "embeddings" / "STORE.json").write_text('{"backend": "redis", "url": "redis://x"}')
    f = _vectors_file(tmp_path / "e.parquet", list(range(1, N_MMCTR + 1)), _rand(N_MMCTR, 4))
    with pytest.raises(DataError) as err:
        import_data(run, preset="mmctr", events=MMCTR, item_vectors=f)
    assert err.value.file == str(run / "embeddings" / "STORE.json") and not (run / "data").exists()


def test_mmrec_feature_files_of_different_lengths_are_refused(tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "baby"
    shutil.copytree(PRESET_EVENTS["mmrec"], d, ignore=shutil.ignore_patterns("*.py"))
    np.save(d / "text_feat.npy", np.load(d / "text_feat.npy")[:30])
    with pytest.raises(DataError) as err:
        import_data(tmp_path / "run", preset="mmrec", events=d)
    assert "image_feat.npy 36" in str(err.value) and "text_feat.npy 30" in str(err.value)
    assert not (tmp_path / "run").exists()

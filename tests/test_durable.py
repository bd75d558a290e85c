"""The one durable write and the one L2 normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from mmrank.durable import commit_file, replacing, write_bytes, write_text
from mmrank.vectors import l2_normalise


def test_write_replaces_and_leaves_no_temp_file(tmp_path):
    p = tmp_path / "f.txt"
    write_text(p, "one")
    write_text(p, "two")
    write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert p.read_text() == "two"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b.bin", "f.txt"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    write_text(p, "old")
    with pytest.raises(RuntimeError):
        with replacing(p, "w") as f:
            f.write("half")
            raise RuntimeError("cut")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_commit_file_moves_into_place(tmp_path):
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes(b"abc")
    commit_file(tmp, tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == b"abc" and not tmp.exists()


def test_l2_normalise_unit_rows_and_zero_rows():
    v = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
    out = l2_normalise(v)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0, rtol=1e-6)
    assert np.all(out[1] == 0)

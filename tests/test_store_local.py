"""The local table's durability: torn writes, CRC damage, mixed versions, the writer lock, SIGKILL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mmrank.data.io import write_table
from mmrank.errors import DataError, MMRankError
from mmrank.store.backends import create_table, open_table, table_versions
from mmrank.store.local import LocalTable, record_dtype

PY = sys.executable


def _vecs(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _segment(root: Path) -> Path:
    (seg,) = sorted(root.glob("v-*/seg-*.bin"))
    return seg


def _table_with_batches(root: Path, sizes: list[int], dim: int = 4) -> np.ndarray:
    with create_table(root, version="enc-a", dim=dim) as t:
        start = 0
        for n in sizes:
            t.put(np.arange(start, start + n), _vecs(n, dim, start), version="enc-a")
            start += n
        t.publish()
    return np.arange(start)


@pytest.mark.parametrize("cut", [1, 17, 40])
def test_torn_tail_is_ignored_then_cut_by_the_next_writer(tmp_path: Path, cut: int) -> None:
    _table_with_batches(tmp_path, [5, 3])
    seg = _segment(tmp_path)
    rs = record_dtype(4).itemsize
    full = seg.stat().st_size
    os.truncate(seg, full - cut)  # the last batch (header + 3 records) loses its last `cut` bytes
    r = open_table(tmp_path)
    assert len(r) == 5 and not r.contains(np.array([5, 6, 7])).any()  # no half batch is visible
    with pytest.warns(UserWarning, match="torn tail"):
        w = open_table(tmp_path, writable=True)
    assert seg.stat().st_size == 6 * rs  # cut back to the end of the first batch
    w.put(np.array([100]), _vecs(1, 4), version="enc-a")
    w.close()
    r2 = open_table(tmp_path)
    np.testing.assert_array_equal(r2.ids(), [0, 1, 2, 3, 4, 100])


def test_damaged_last_batch_fails_its_crc(tmp_path: Path) -> None:
    _table_with_batches(tmp_path, [5, 3])
    seg = _segment(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the last vector
    seg.write_bytes(bytes(data))
    r = open_table(tmp_path)
    assert len(r) == 5


def test_garbage_appended_is_ignored(tmp_path: Path) -> None:
    _table_with_batches(tmp_path, [5])
    with open(_segment(tmp_path), "ab") as f:
        f.write(os.urandom(1000))
    assert len(open_table(tmp_path)) == 5


def test_a_batch_of_another_version_is_refused(tmp_path: Path) -> None:
    _table_with_batches(tmp_path, [5])
    other = tmp_path / "other"
    with create_table(other, version="enc-b", dim=4) as t:
        t.put(np.array([9]), _vecs(1, 4), version="enc-b")
    with open(_segment(tmp_path), "ab") as f:
        f.write(_segment(other).read_bytes())
    with pytest.raises(DataError, match="two versions are never mixed"):
        open_table(tmp_path)


def test_one_writer_many_readers(tmp_path: Path) -> None:
    _table_with_batches(tmp_path, [5])
    w = open_table(tmp_path, writable=True)
    with pytest.raises(MMRankError, match="another process is writing"):
        open_table(tmp_path, writable=True)
    readers = [open_table(tmp_path) for _ in range(3)]
    w.put(np.array([50]), _vecs(1, 4), version="enc-a")
    assert all(r.get(np.array([50])).shape == (1, 4) for r in readers)
    w.close()
    open_table(tmp_path, writable=True).close()  # the lock is free again


def test_segments_roll_over(tmp_path: Path) -> None:
    t = LocalTable.create_version(tmp_path, "enc-a", 4, segment_bytes=200)
    for i in range(6):
        t.put(np.arange(i * 3, i * 3 + 3), _vecs(3, 4, i), version="enc-a")
    t.close()
    assert len(list(tmp_path.glob("v-*/seg-*.bin"))) > 1
    r = open_table(tmp_path, "enc-a")
    np.testing.assert_array_equal(r.get(np.array([0, 17, 9])),
                                  np.stack([_vecs(3, 4, 0)[0], _vecs(3, 4, 5)[2], _vecs(3, 4, 3)[0]]))


_PUT_LOOP = textwrap.dedent("""
    import sys, numpy as np
    from mmrank.store.backends import create_table
    t = create_table(sys.argv[1], version="enc-a", dim=64)
    start = int(sys.argv[2])
    for b in range(10_000):
        ids = np.arange(start + b * 2000, start + (b + 1) * 2000)
        t.put(ids, (ids[:, None] % 1000 + np.arange(64)).astype(np.float32), version="enc-a")
        print(int(ids[-1]), flush=True)
""")


@pytest.mark.slow
def test_sigkill_during_puts_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """Kill -9 a writer at several moments: every acknowledged id survives, the table opens."""
    acked_until = -1
    for round_, delay in enumerate([0.3, 0.7, 1.1]):
        proc = subprocess.Popen([PY, "-c", _PUT_LOOP, str(tmp_path), str(acked_until + 1)],
                                stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()  # the first acknowledged batch (imports are done)
        assert line, "writer did not start"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acked = [int(x) for x in ([line] + out.split()) if str(x).strip()]
        acked_until = max(acked)
        r = open_table(tmp_path, "enc-a")
        assert r.contains(np.arange(0, acked_until + 1)).all(), f"round {round_}: lost a write"
        ids = r.ids()
        np.testing.assert_array_equal(r.get(ids), (ids[:, None] % 1000 + np.arange(64)))
        np.testing.assert_array_equal(ids, np.arange(len(ids)))  # whole batches only, in order
        assert len(ids) % 2000 == 0
        acked_until = len(ids) - 1  # the next writer continues after what is on disk


def _jpeg(seed: int) -> bytes:
    a = (np.random.default_rng(seed).random((20, 20, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


_EMBED = textwrap.dedent("""
    import sys
    from mmrank.store.stage import embed_catalog
    from mmrank.store.tiny_encoder import TinyItemEncoder
    ack = lambda ids: print(" ".join(map(str, ids.tolist())), flush=True)
    print(embed_catalog(sys.argv[1], TinyItemEncoder(16, 0), batch_size=20, progress=False,
                        on_batch=ack)["encoded"], "ENCODED", flush=True)
""")


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_bulk_embed_then_resume(tmp_path: Path) -> None:
    """The acceptance test: SIGKILL a bulk `embed`; acknowledged items survive; the resumed run
    completes the rest without duplicates."""
    n = 1500
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    write_table(pa.table({
        "item_id": pa.array(ids), "title": [f"item {i} red shirt" for i in range(n)],
        "image": [_jpeg(i % 50) for i in range(n)], "category": ["c"] * n,
        "price": np.ones(n), "created_at": pa.array(np.zeros(n, np.int64))}),
        tmp_path / "data" / "items.parquet")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([PY, "-c", _EMBED, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=env)
    acked: list[int] = []
    while len(acked) < 200:
        line = proc.stdout.readline()
        assert line and "ENCODED" not in line, "embed finished before it could be killed"
        acked += [int(x) for x in line.split()]
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    acked += [int(x) for x in rest.split()]
    assert len(acked) < n
    root = tmp_path / "embeddings"
    t = open_table(root, table_versions(root)[0])
    assert t.contains(np.array(acked)).all()
    assert len(t) < n
    done = subprocess.run([PY, "-c", _EMBED, str(tmp_path)], capture_output=True, text=True,
                          env=env, check=True)
    encoded = int(done.stdout.split()[-2])
    t2 = open_table(root)  # published now
    np.testing.assert_array_equal(t2.ids(), ids)
    assert encoded == n - len(t)
    assert isinstance(t2, LocalTable) and t2.n_records == n  # nothing was written twice

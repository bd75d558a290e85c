"""EmbeddingTable: one suite, run against both backends (local files and a real redis-server)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from mmrank.errors import DataError, MMRankError
from mmrank.store.backends import create_table, current_version, open_table, table_versions
from mmrank.store.table import set_store_config

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A private redis-server on 127.0.0.1 (free port, temp dir, fsync on every write)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (apt-get install redis-server): redis backend untested")
    redis = pytest.importorskip("redis", reason="redis-py not installed (pip install 'mmrank[redis]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                             "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An embeddings root whose STORE.json selects the backend under test."""
    r = tmp_path / "embeddings"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        set_store_config(r, "redis", url, namespace=f"t{uuid.uuid4().hex[:8]}")
    else:
        r.mkdir()
    return r


def _vecs(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_put_get_roundtrip(root: Path) -> None:
    ids = np.array([30, 10, 20, 1 << 40, -5], dtype=np.int64)
    v = _vecs(5, 8)
    with create_table(root, version="enc-a", dim=8, encoder_name="tiny") as t:
        t.put(ids, v, version="enc-a")
        t.publish()
        assert len(t) == 5
        np.testing.assert_array_equal(t.ids(), np.sort(ids))
        np.testing.assert_array_equal(t.get(ids[::-1]), v[::-1])
    r = open_table(root)
    assert (r.version, r.dim, len(r)) == ("enc-a", 8, 5)
    np.testing.assert_array_equal(r.get(np.array([20, 30])), v[[2, 0]])
    assert r.get(np.array([20, 30])).dtype == np.float32


def test_missing_ids_raise_or_zero(root: Path) -> None:
    with create_table(root, version="enc-a", dim=4) as t:
        t.put(np.array([1, 2]), _vecs(2, 4), version="enc-a")
        t.publish()
    r = open_table(root)
    with pytest.raises(KeyError, match="item id 77 "):
        r.get(np.array([1, 77, 78]))
    out = r.get(np.array([1, 77]), missing="zero")
    assert out.shape == (2, 4) and np.all(out[1] == 0) and np.any(out[0] != 0)
    np.testing.assert_array_equal(r.contains(np.array([2, 3, 1])), [True, False, True])


def test_later_put_replaces_vector(root: Path) -> None:
    with create_table(root, version="enc-a", dim=4) as t:
        t.put(np.array([1, 2]), _vecs(2, 4), version="enc-a")
        new = _vecs(1, 4, seed=9)
        t.put(np.array([2]), new, version="enc-a")
        assert len(t) == 2
        np.testing.assert_array_equal(t.get(np.array([2])), new)


@pytest.mark.parametrize("bad", ["dim", "version", "nan", "dup", "ids2d"])
def test_bad_batch_raises_and_writes_nothing(root: Path, bad: str) -> None:
    with create_table(root, version="enc-a", dim=4) as t:
        t.put(np.array([1]), _vecs(1, 4), version="enc-a")
        ids, v, version = np.array([5, 6]), _vecs(2, 4, 1), "enc-a"
        if bad == "dim":
            v = _vecs(2, 5)
        elif bad == "version":
            version = "enc-b"
        elif bad == "nan":
            v[1, 2] = np.nan
        elif bad == "dup":
            ids = np.array([5, 5])
        elif bad == "ids2d":
            ids = np.array([[5, 6]])
        with pytest.raises(DataError) as err:
            t.put(ids, v, version=version)
        msg = str(err.value)
        expected = {"dim": "expected shape (2, 4)", "version": "'enc-b' cannot go into the table",
                    "nan": "not finite", "dup": "id 5 appears twice", "ids2d": "1-d integer"}[bad]
        assert expected in msg
        assert len(t) == 1 and not t.contains(np.array([5, 6])).any()
    assert len(open_table(root, "enc-a")) == 1


def test_read_only_refuses_put(root: Path) -> None:
    with create_table(root, version="enc-a", dim=4) as t:
        t.publish()
    r = open_table(root)
    with pytest.raises(MMRankError, match="read-only"):
        r.put(np.array([1]), _vecs(1, 4), version="enc-a")


def test_reader_sees_later_writes(root: Path) -> None:
    w = create_table(root, version="enc-a", dim=4)
    w.put(np.array([1]), _vecs(1, 4), version="enc-a")
    w.publish()
    r = open_table(root)
    assert len(r) == 1
    v = _vecs(3, 4, 3)
    w.put(np.array([2, 3, 4]), v, version="enc-a")
    np.testing.assert_array_equal(r.get(np.array([4, 2])), v[[2, 0]])  # get refreshes on a miss
    r.refresh()
    assert len(r) == 4
    w.close()


def test_new_version_switches_atomically_and_never_mixes(root: Path) -> None:
    with create_table(root, version="enc-1", dim=4) as t1:
        t1.put(np.arange(10), _vecs(10, 4), version="enc-1")
        t1.publish()
    assert current_version(root) == "enc-1"
    t2 = create_table(root, version="enc-2", dim=6)
    t2.put(np.arange(5), _vecs(5, 6), version="enc-2")
    # Half-built: readers still get version 1, whole.
    r = open_table(root)
    assert (r.version, r.dim, len(r)) == ("enc-1", 4, 10)
    with pytest.raises(DataError, match="enc-1"):
        t2.put(np.array([7]), _vecs(1, 6), version="enc-1")
    t2.put(np.arange(5, 10), _vecs(5, 6, 1), version="enc-2")
    t2.publish()
    t2.close()
    r2 = open_table(root)
    assert (r2.version, r2.dim, len(r2)) == ("enc-2", 6, 10)
    assert sorted(table_versions(root)) == ["enc-1", "enc-2"]
    old = open_table(root, "enc-1")  # the old table is intact beside the new one
    assert old.get(np.arange(10)).shape == (10, 4)
    with pytest.raises(DataError, match="dim"):
        create_table(root, version="enc-2", dim=7)


def test_open_without_a_table(root: Path) -> None:
    with pytest.raises(MMRankError, match="mmrank embed"):
        open_table(root)
    with pytest.raises(MMRankError, match="no embedding table of version"):
        open_table(root, "nope")


def test_random_operations_match_a_dict(root: Path) -> None:
    """A random sequence of puts and gets agrees with a plain dict model of the table."""
    rng = np.random.default_rng(7)
    model: dict[int, np.ndarray] = {}
    with create_table(root, version="enc-a", dim=3) as t:
        for _ in range(25):
            n = int(rng.integers(1, 20))
            ids = rng.choice(60, size=n, replace=False).astype(np.int64)
            v = rng.normal(size=(n, 3)).astype(np.float32)
            t.put(ids, v, version="enc-a")
            model.update({int(i): row for i, row in zip(ids, v)})
            q = rng.choice(60, size=15).astype(np.int64)
            got = t.get(q, missing="zero")
            want = np.stack([model.get(int(i), np.zeros(3, np.float32)) for i in q])
            np.testing.assert_array_equal(got, want)
        assert len(t) == len(model)
        np.testing.assert_array_equal(t.ids(), np.array(sorted(model)))


def test_embed_ingest_search_on_the_backend(root: Path) -> None:
    """The whole flow on this backend: bulk embed, ingest, a second reader sees the new item."""
    import torch

    from mmrank.store.items import ItemStore
    from mmrank.store.stage import embed_catalog
    from mmrank.store.tiny_encoder import TinyItemEncoder
    from mmrank.testing.items import jpeg, make_items

    torch.set_num_threads(1)
    run = root.parent
    ids, _, _ = make_items(run, n=40)
    enc = TinyItemEncoder(dim=16, seed=0)
    stats = embed_catalog(run, enc, batch_size=16, progress=False)
    assert stats["items"] == 40
    reader = open_table(root)
    assert type(reader).__name__ == ("RedisTable" if (root / "STORE.json").exists() else "LocalTable")
    with ItemStore.open(run, enc, hold_writer=True) as store:
        img = jpeg("blue", 3)
        store.ingest({"item_id": 4242, "title": "blue striped shirt", "image": img})
        want = enc.encode_items(["blue striped shirt"], [img])
        np.testing.assert_allclose(reader.get(np.array([4242])), want, atol=1e-6)
        assert store.search_vector(want[0], k=1)[0]["item_id"] == 4242
        with pytest.raises(DataError, match="empty title"):
            store.ingest({"item_id": 4243, "title": "", "image": img})
    assert len(open_table(root)) == 41

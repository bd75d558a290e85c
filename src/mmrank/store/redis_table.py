"""The Redis embedding table: several serving hosts share one table on a Redis server.

Keys (``ns`` is the namespace, default ``mmrank``; set it in ``R/embeddings/STORE.json``)::

    {ns}:CURRENT                 the version readers open (SET is atomic)
    {ns}:versions                set of versions with a table
    {ns}:v:{version}:meta        hash: format, version, dim, encoder_name
    {ns}:v:{version}:vec         hash: field = item id (int64 little-endian, 8 bytes),
                                 value = version stamp (uint32 LE) + float32[D] LE

A put is one MULTI/EXEC transaction (all of the batch or none of it). Durability is the server's:
run it with ``appendonly yes`` and ``appendfsync always`` for "acknowledged means on disk" (the
tests do). Every value carries the version stamp, checked on read.
"""

from __future__ import annotations

import numpy as np

from mmrank.errors import ConfigError, DataError, MMRankError
from mmrank.store.table import EmbeddingTable, version_stamp

FORMAT = "mmrank-embeddings-redis/1"
_CHUNK = 8192  # fields per HSET / HMGET command


def _connect(url: str):
    try:
        import redis
    except ImportError:
        raise ConfigError("the redis backend needs redis-py: pip install 'mmrank[redis]'") from None
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as err:
        raise MMRankError(f"cannot reach the Redis server at {url} ({err})") from None
    return client


class RedisTable(EmbeddingTable):
    """An :class:`EmbeddingTable` in a Redis hash (see the module docstring for the keys)."""

    def __init__(self, root, client, url: str, ns: str, meta: dict, writable: bool) -> None:
        self.root, self.client, self.url, self.ns = root, client, url, ns
        self.version, self.dim = meta["version"], int(meta["dim"])
        self.encoder_name = meta.get("encoder_name", "")
        self.stamp = version_stamp(self.version)
        self._stamp_bytes = np.uint32(self.stamp).tobytes()
        self.writable = writable
        self.key = f"{ns}:v:{self.version}:vec"

    def __repr__(self) -> str:
        return f"RedisTable({self.url!r}, namespace={self.ns!r}, version={self.version!r}, dim={self.dim})"

    # ---- opening (see mmrank.store.backends) -------------------------------------------------------------------------------
    @staticmethod
    def current_version(root, url: str, namespace: str | None = None) -> str | None:
        v = _connect(url).get(f"{namespace or 'mmrank'}:CURRENT")
        return v.decode() if v is not None else None

    @classmethod
    def versions(cls, root, url: str, namespace: str | None = None) -> list[str]:
        return sorted(v.decode() for v in _connect(url).smembers(f"{namespace or 'mmrank'}:versions"))

    @classmethod
    def _read_meta(cls, client, ns: str, version: str, url: str) -> dict:
        raw = client.hgetall(f"{ns}:v:{version}:meta")
        if not raw:
            raise MMRankError(f"{url} ({ns}): no embedding table of version {version!r}")
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        if meta.get("format") != FORMAT:
            raise DataError(f"unknown format {meta.get('format')!r}, expected {FORMAT!r}",
                            file=f"{url} {ns}:v:{version}:meta", column="format")
        return meta

    @classmethod
    def open_version(cls, root, version: str, writable: bool = False, url: str = "",
              namespace: str | None = None) -> "RedisTable":
        ns = namespace or "mmrank"
        client = _connect(url)
        return cls(root, client, url, ns, cls._read_meta(client, ns, version, url), writable)

    @classmethod
    def create_version(cls, root, version: str, dim: int, encoder_name: str = "", url: str = "",
                namespace: str | None = None) -> "RedisTable":
        ns = namespace or "mmrank"
        client = _connect(url)
        meta_key = f"{ns}:v:{version}:meta"
        client.hsetnx(meta_key, "format", FORMAT)
        client.hsetnx(meta_key, "version", version)
        client.hsetnx(meta_key, "dim", str(dim))
        client.hsetnx(meta_key, "encoder_name", encoder_name)
        client.sadd(f"{ns}:versions", version)
        meta = cls._read_meta(client, ns, version, url)
        if int(meta["dim"]) != dim:
            raise DataError(f"the table of version {version!r} has dim {meta['dim']}, asked for "
                            f"{dim}", file=f"{url} {meta_key}", column="dim")
        return cls(root, client, url, ns, meta, writable=True)

    # ---- reading -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.client.hlen(self.key))

    def ids(self) -> np.ndarray:
        keys = self.client.hkeys(self.key)
        if not keys:
            return np.zeros(0, np.int64)
        return np.sort(np.frombuffer(b"".join(keys), dtype="<i8").astype(np.int64))

    def contains(self, item_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids, np.int64).reshape(-1)
        pipe = self.client.pipeline(transaction=False)
        for f in ids.astype("<i8"):
            pipe.hexists(self.key, f.tobytes())
        return np.array(pipe.execute(), dtype=bool) if len(ids) else np.zeros(0, bool)

    def _gather(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fields = [f.tobytes() for f in item_ids.astype("<i8")]
        pipe = self.client.pipeline(transaction=False)
        for i in range(0, len(fields), _CHUNK):
            pipe.hmget(self.key, fields[i:i + _CHUNK])
        values = [v for chunk in pipe.execute() for v in chunk] if fields else []
        out = np.zeros((len(fields), self.dim), np.float32)
        found = np.array([v is not None for v in values], dtype=bool)
        if found.any():
            size = 4 + 4 * self.dim
            blob = b"".join(v for v in values if v is not None)
            if len(blob) != size * int(found.sum()):
                raise DataError(f"a value of the wrong size in {self.key} (expected {size} bytes "
                                f"per vector)", file=self.url)
            rec = np.frombuffer(blob, dtype=np.dtype([("stamp", "<u4"), ("vec", "<f4", (self.dim,))]))
            bad = rec["stamp"] != self.stamp
            if bad.any():
                i = int(np.flatnonzero(found)[np.flatnonzero(bad)[0]])
                raise DataError(f"item {int(item_ids[i])} is stamped with another encoder version "
                                f"than {self.version!r}: two versions are never mixed",
                                file=f"{self.url} {self.key}")
            out[found] = rec["vec"]
        return out, found

    # ---- writing -------------------------------------------------------------------------------------
    def _append(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        rec = np.empty(len(ids), dtype=np.dtype([("stamp", "<u4"), ("vec", "<f4", (self.dim,))]))
        rec["stamp"] = self.stamp
        rec["vec"] = vecs
        size = rec.dtype.itemsize
        raw = rec.tobytes()
        mapping = {i.tobytes(): raw[k * size:(k + 1) * size] for k, i in enumerate(ids.astype("<i8"))}
        items = list(mapping.items())
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC: the whole batch or none of it
        for i in range(0, len(items), _CHUNK):
            pipe.hset(self.key, mapping=dict(items[i:i + _CHUNK]))
        pipe.execute()

    def publish(self) -> None:
        self.client.set(f"{self.ns}:CURRENT", self.version)

    def close(self) -> None:
        self.writable = False
        try:
            self.client.close()
        except Exception:
            pass

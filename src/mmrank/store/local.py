"""The local embedding table: append-only segment files of fixed-size records, memory-mapped.

On-disk format (``R/embeddings/v-<version>/``)::

    meta.json          {"format", "version", "dim", "encoder_name", "stamp"}
    LOCK               the one writer holds fcntl.flock(LOCK_EX) on it
    seg-000000.bin     batches, appended; each batch is one header record + N data records

Every record has the same size, ``16 + 4*D`` bytes (``id int64, n uint32, crc uint32, vec float32[D]``),
so a segment is a numpy structured array and a batch gather is one fancy index on a memory map.
A header record has ``id = MAGIC``, ``n`` = the batch's row count, ``crc`` = CRC-32 of the header
fields, the version stamp and the N data records; its ``vec`` holds the version stamp (as uint32)
and the write time. A batch is acknowledged only after ``fdatasync``; a batch that is short or fails
its CRC (a write torn by ``kill -9``) is ignored by readers and cut off by the next writer, so a torn
write never corrupts the table and never makes half a batch visible.

Readers build the sorted id -> row index on open by scanning the batch headers (one CRC per batch)
and extend it incrementally (:meth:`LocalTable.refresh`) when the writer has appended since.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

from mmrank.durable import fsync_dir, write_text
from mmrank.errors import DataError, MMRankError
from mmrank.store.table import CURRENT, EmbeddingTable, version_dirname, version_stamp

FORMAT = "mmrank-embeddings/1"
MAGIC = 0x5244485F4B524D4D  # b"MMRK_HDR" little-endian, as int64
SEGMENT_BYTES = 512 << 20
ROW_BITS = 40  # a location is seg << 40 | row
_HDR = struct.Struct("<qII")


def record_dtype(dim: int) -> np.dtype:
    """One record: ``id int64, n uint32, crc uint32, vec float32[dim]`` (``16 + 4*dim`` bytes)."""
    return np.dtype([("id", "<i8"), ("n", "<u4"), ("crc", "<u4"), ("vec", "<f4", (dim,))])


def _batch_crc(n: int, stamp: int, body: memoryview | bytes) -> int:
    return zlib.crc32(body, zlib.crc32(_HDR.pack(MAGIC, n, 0) + struct.pack("<I", stamp)))


class _Segment:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.valid = 0  # bytes of whole, checked batches
        self.mm: np.ndarray | None = None
        self.mapped = 0


class LocalTable(EmbeddingTable):
    """The embedded default backend (see the module docstring for the format)."""

    def __init__(self, root: Path, dirpath: Path, meta: dict, writable: bool,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.root, self.dirpath = root, dirpath
        self.version, self.dim = meta["version"], int(meta["dim"])
        self.encoder_name = meta.get("encoder_name", "")
        self.stamp = version_stamp(self.version)
        self.writable = writable
        self.segment_bytes = segment_bytes
        self.rec = record_dtype(self.dim)
        self._segs: list[_Segment] = []
        self._ids = np.zeros(0, np.int64)  # sorted unique
        self._locs = np.zeros(0, np.int64)
        self._d_ids = np.zeros(0, np.int64)  # a small sorted delta of recent writes, merged lazily
        self._d_locs = np.zeros(0, np.int64)
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._mutex = threading.RLock()  # one process may read and write from several threads
        self.n_records = 0  # data records on disk (more than len(self) when ids were rewritten)
        self.n_batches = 0
        if writable:
            self._lock_fd = os.open(dirpath / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise MMRankError(f"{dirpath}: another process is writing this embedding table "
                                  f"(it holds {dirpath / 'LOCK'})") from None
        self.refresh(truncate_torn=writable)

    def __repr__(self) -> str:
        return f"LocalTable({str(self.dirpath)!r}, version={self.version!r}, dim={self.dim})"

    # ---- opening (see mmrank.store.backends) -------------------------------------------------------------------------------
    @staticmethod
    def current_version(root: Path) -> str | None:
        f = root / CURRENT
        return f.read_text().strip() if f.exists() else None

    @classmethod
    def versions(cls, root: Path) -> list[str]:
        out = []
        for d in sorted(root.glob("v-*")):
            if (d / "meta.json").exists():
                out.append(json.loads((d / "meta.json").read_text())["version"])
        return out

    @classmethod
    def _read_meta(cls, dirpath: Path, version: str) -> dict:
        try:
            meta = json.loads((dirpath / "meta.json").read_text())
        except FileNotFoundError:
            raise MMRankError(f"{dirpath}: no embedding table of version {version!r} "
                              f"(no meta.json)") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"unknown format {meta.get('format')!r}, expected {FORMAT!r}",
                            file=str(dirpath / "meta.json"), column="format")
        if meta.get("version") != version:
            raise DataError(f"holds version {meta.get('version')!r}, expected {version!r}",
                            file=str(dirpath / "meta.json"), column="version")
        return meta

    @classmethod
    def open_version(cls, root: Path, version: str, writable: bool = False) -> "LocalTable":
        dirpath = root / version_dirname(version)
        return cls(root, dirpath, cls._read_meta(dirpath, version), writable)

    @classmethod
    def create_version(cls, root: Path, version: str, dim: int, encoder_name: str = "",
                segment_bytes: int = SEGMENT_BYTES) -> "LocalTable":
        dirpath = root / version_dirname(version)
        dirpath.mkdir(parents=True, exist_ok=True)
        if (dirpath / "meta.json").exists():
            meta = cls._read_meta(dirpath, version)
            if int(meta["dim"]) != dim:
                raise DataError(f"the table of version {version!r} has dim {meta['dim']}, "
                                f"asked for {dim}", file=str(dirpath / "meta.json"), column="dim")
        else:
            meta = {"format": FORMAT, "version": version, "dim": dim, "encoder_name": encoder_name,
                    "stamp": version_stamp(version), "created": time.time()}
            write_text(dirpath / "meta.json", json.dumps(meta, indent=1) + "\n")
            fsync_dir(root)
        return cls(root, dirpath, meta, writable=True, segment_bytes=segment_bytes)

    # ---- reading -------------------------------------------------------------------------------------
    def refresh(self, truncate_torn: bool = False) -> None:
        """Scan what was appended since the last scan; with ``truncate_torn`` cut a torn tail off."""
        with self._mutex:
            self._refresh(truncate_torn)

    def _refresh(self, truncate_torn: bool) -> None:
        paths = sorted(self.dirpath.glob("seg-*.bin"))
        for p in paths[len(self._segs):]:
            self._segs.append(_Segment(p))
        new_ids, new_locs = [], []
        for si, seg in enumerate(self._segs):
            size = seg.path.stat().st_size
            if size == seg.valid:
                continue
            ids, locs, valid = self._scan(si, seg, size)
            new_ids += ids
            new_locs += locs
            if valid < size and truncate_torn:
                if si != len(self._segs) - 1:
                    raise DataError(f"damaged batch at byte {valid} in a segment that is not the "
                                    f"last one ({size - valid} bytes after it)", file=str(seg.path))
                warnings.warn(f"{seg.path}: dropping a torn tail of {size - valid} bytes "
                              f"(an unacknowledged write)", stacklevel=2)
                os.truncate(seg.path, valid)
            seg.valid = valid
        if new_ids:
            self._merge(np.concatenate(new_ids), np.concatenate(new_locs), into_base=False)

    def _scan(self, si: int, seg: _Segment, size: int) -> tuple[list, list, int]:
        """Check batches of ``seg`` from ``seg.valid`` to ``size``; return their ids, locations and
        the offset where the checked part ends. Reads with pread (never mmap: a writer may cut a
        torn tail off while we read, and a read past the end of a mapping is SIGBUS)."""
        rs = self.rec.itemsize
        ids, locs = [], []
        pos = seg.valid
        fd = os.open(seg.path, os.O_RDONLY)
        try:
            while pos + rs <= size:
                head = os.pread(fd, 20, pos)
                if len(head) < 20:
                    break
                magic, n, crc = _HDR.unpack_from(head, 0)
                stamp = struct.unpack_from("<I", head, 16)[0]
                end = pos + rs * (n + 1)
                if magic != MAGIC or end > size:
                    break
                body = os.pread(fd, end - pos - rs, pos + rs)
                if len(body) != end - pos - rs or _batch_crc(n, stamp, body) != crc:
                    break
                if stamp != self.stamp:
                    raise DataError(f"batch at byte {pos} is stamped with encoder version hash "
                                    f"{stamp:#010x}, this table holds {self.version!r} "
                                    f"({self.stamp:#010x}): two versions are never mixed",
                                    file=str(seg.path))
                ids.append(np.frombuffer(body, dtype=self.rec)["id"].copy())
                self.n_records += n
                self.n_batches += 1
                first_row = pos // rs + 1
                locs.append((np.int64(si) << ROW_BITS)
                            + np.arange(first_row, first_row + n, dtype=np.int64))
                pos = end
        finally:
            os.close(fd)
        return ids, locs, pos

    def _merge(self, ids: np.ndarray, locs: np.ndarray, into_base: bool) -> None:
        """Add (id, location) pairs; a later location of the same id wins."""
        if into_base or len(self._d_ids) + len(ids) > 4096:
            all_ids = np.concatenate([self._ids, self._d_ids, ids])
            all_locs = np.concatenate([self._locs, self._d_locs, locs])
            self._d_ids = np.zeros(0, np.int64)
            self._d_locs = np.zeros(0, np.int64)
            target = "base"
        else:
            all_ids = np.concatenate([self._d_ids, ids])
            all_locs = np.concatenate([self._d_locs, locs])
            target = "delta"
        order = np.argsort(all_ids, kind="stable")
        s = all_ids[order]
        last = np.ones(len(s), bool)
        last[:-1] = s[1:] != s[:-1]
        keep = order[last]
        if target == "base":
            self._ids, self._locs = all_ids[keep], all_locs[keep]
        else:
            self._d_ids, self._d_locs = all_ids[keep], all_locs[keep]

    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(locations (N,) int64, found (N,) bool)``; the delta overrides the base."""
        locs = np.full(len(ids), -1, np.int64)
        for keys, vals in ((self._ids, self._locs), (self._d_ids, self._d_locs)):
            if len(keys) == 0:
                continue
            pos = np.searchsorted(keys, ids)
            pos = np.minimum(pos, len(keys) - 1)
            hit = keys[pos] == ids
            locs[hit] = vals[pos[hit]]
        return locs, locs >= 0

    def _map(self, si: int) -> np.ndarray:
        seg = self._segs[si]
        if seg.mm is None or seg.mapped < seg.valid:
            seg.mm = np.memmap(seg.path, dtype=self.rec, mode="r",
                               shape=(seg.valid // self.rec.itemsize,))
            seg.mapped = seg.valid
        return seg.mm

    def _gather(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._mutex:
            return self._gather_locked(item_ids)

    def _gather_locked(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        locs, found = self._lookup(item_ids)
        out = np.zeros((len(item_ids), self.dim), np.float32)
        if found.any():
            segs = locs >> ROW_BITS
            rows = locs & ((1 << ROW_BITS) - 1)
            for si in np.unique(segs[found]):
                sel = found & (segs == si)
                out[sel] = self._map(int(si))["vec"][rows[sel]]
        return out, found

    def __len__(self) -> int:
        with self._mutex:
            base, delta = self._ids, self._d_ids
            if not len(base) or not len(delta):
                return len(base) + len(delta)
            pos = np.minimum(np.searchsorted(base, delta), len(base) - 1)
            return len(base) + int((base[pos] != delta).sum())

    def ids(self) -> np.ndarray:
        with self._mutex:
            if len(self._d_ids):
                self._merge(np.zeros(0, np.int64), np.zeros(0, np.int64), into_base=True)
            return self._ids.copy()

    def contains(self, item_ids: np.ndarray) -> np.ndarray:
        with self._mutex:
            return self._lookup(np.asarray(item_ids, np.int64).reshape(-1))[1]

    # ---- writing -------------------------------------------------------------------------------------
    def _writer_fd(self) -> tuple[int, int]:
        """The fd of the segment to append to and its index, rolling to a new one when full."""
        if self._segs and self._segs[-1].valid < self.segment_bytes:
            si = len(self._segs) - 1
        else:
            si = len(self._segs)
            path = self.dirpath / f"seg-{si:06d}.bin"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            fsync_dir(self.dirpath)
            self._segs.append(_Segment(path))
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._fd is None:
            self._fd = os.open(self._segs[si].path, os.O_WRONLY | os.O_APPEND)
            self._fd_seg = si
        return self._fd, si

    def _append(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        with self._mutex:
            self._append_locked(ids, vecs)

    def _append_locked(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        n = len(ids)
        recs = np.zeros(n + 1, self.rec)
        recs["id"][1:] = ids
        recs["n"][1:] = np.arange(n, dtype=np.uint32)
        recs["vec"][1:] = vecs
        recs["id"][0] = MAGIC
        recs["n"][0] = n
        hdr_vec = recs["vec"][0].view(np.uint32)
        hdr_vec[0] = self.stamp
        if self.dim >= 3:
            recs["vec"][0][1:3].view(np.uint32)[:] = np.frombuffer(
                struct.pack("<d", time.time()), np.uint32)
        body = recs[1:].tobytes()
        recs["crc"][0] = _batch_crc(n, self.stamp, body)
        data = recs.tobytes()
        fd, si = self._writer_fd()
        seg = self._segs[si]
        start = seg.valid
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fdatasync(fd)
        except BaseException:
            try:
                os.truncate(seg.path, start)
            finally:
                raise
        seg.valid = start + len(data)
        self.n_records += n
        self.n_batches += 1
        first_row = start // self.rec.itemsize + 1
        self._merge(ids, (np.int64(si) << ROW_BITS) + np.arange(first_row, first_row + n,
                                                               dtype=np.int64), into_base=False)

    def publish(self) -> None:
        write_text(self.root / CURRENT, self.version + "\n")

    def close(self) -> None:
        for seg in self._segs:
            seg.mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        self.writable = False

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

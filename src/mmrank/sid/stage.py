"""``mmrank sid build --run R``: semantic IDs of the run's embedding table, written beside it.

Layout (``R`` the run, ``<v>`` the encoder version of the table)::

    R/embeddings/v-<v>/sid/codes.parquet          item_id int64, codes list<int32> (L), token int32
    R/embeddings/v-<v>/sid/codebooks.safetensors  "codebooks": (L, C, D) float32
    R/embeddings/v-<v>/sid/meta.json              encoder_version, levels, codes, dim, per-level stats,
                                                  collisions, settings, sid_version (codebooks hash)
    R/embeddings/v-<v>/sid/lineage.json           made from: that encoder version, its table, data/items

Point-in-time: the codes are a function of item content only (the frozen representations of title and
image in the table); no behaviour (click, sample, label) is read, so building them over the whole
catalog leaks nothing into the CTR test split. ``token`` is the collision rule's last token
(:func:`mmrank.sid.build.disambiguate`); the CTR strategies learn the L semantic levels only.

Re-embedding with another encoder version builds a new table directory and so needs a new
``sid build``; a table rebuilt for the same version removes its ``sid/`` with it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrank import lineage
from mmrank.errors import ConfigError, MMRankError
from mmrank.sid.build import assign, disambiguate, residual_kmeans
from mmrank.sid.config import SidConfig
from mmrank.vectors import l2_normalise

SID_DIR = "sid"


def sid_dir(run: Path, version: str) -> Path:
    """``R/embeddings/v-<version>/sid``: beside the table of that encoder version."""
    from mmrank.store.table import version_dirname

    return Path(run) / "embeddings" / version_dirname(str(version)) / SID_DIR


def _inputs(run: Path, version: str) -> dict[str, str]:
    from mmrank.store.table import version_dirname

    inputs = {"encoder": str(version), **lineage.data_inputs(run, "items")}
    table = (lineage.read(Path(run) / "embeddings" / version_dirname(str(version))) or {}).get("digest")
    if table:
        inputs["embeddings"] = str(table)
    return inputs


@dataclass
class SidCodes:
    """A run's semantic IDs: catalog codes by item id and the codebooks that assign new items'."""

    ids: np.ndarray            # (N,) int64 sorted
    codes: np.ndarray          # (N, L) int64, each in [0, C)
    token: np.ndarray          # (N,) int64, the collision rule's last token
    codebooks: np.ndarray      # (L, C, D) float32
    encoder_version: str
    version: str               # sid_version: a hash of the codebooks
    meta: dict = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def n_codes(self) -> int:
        return int(self.codebooks.shape[1])

    def lookup(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(codes (n, L), found (n,))`` of the catalog; rows not found are zero."""
        q = np.asarray(item_ids, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, q), max(len(self.ids) - 1, 0))
        found = (self.ids[pos] == q) if len(self.ids) else np.zeros(len(q), bool)
        out = np.zeros((len(q), self.levels), np.int64)
        out[found] = self.codes[pos[found]]
        return out, found

    def codes_for(self, item_ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Codes ``(n, L)`` of items with representations ``vectors (n, D)`` (L2-normalised): the
        catalog's codes where built, :func:`assign` with the codebooks for the others (new items)."""
        out, found = self.lookup(item_ids)
        if (~found).any():
            out[~found] = assign(self.codebooks, l2_normalise(np.asarray(vectors, np.float32)[~found]))
        return out


def build_sid(run: Path, cfg: SidConfig | None = None, *, version: str | None = None) -> dict:
    """Residual k-means over the table of ``version`` (default: the CURRENT one); writes ``sid/``
    beside it (module docstring) and returns its ``meta.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    from mmrank.durable import write_text
    from mmrank.store.backends import open_table

    run = Path(run)
    cfg = cfg or SidConfig()
    t0 = time.perf_counter()
    table = open_table(run / "embeddings", version)
    try:
        lineage.check_embeddings(run, table.version)
        version = table.version
        ids = np.sort(table.ids())
        if len(ids) == 0:
            raise MMRankError(f"{run}/embeddings: the table of encoder version {version!r} is empty")
        vecs = l2_normalise(np.asarray(table.get(ids), np.float32))
    finally:
        table.close()
    books, codes, stats = residual_kmeans(vecs, cfg.levels, cfg.codes, seed=cfg.seed, niter=cfg.niter,
                                          nredo=cfg.nredo,
                                          max_points_per_centroid=cfg.max_points_per_centroid)
    token = disambiguate(ids, codes)
    _, shared = np.unique(codes, axis=0, return_counts=True)
    d = sid_dir(run, version)
    d.mkdir(parents=True, exist_ok=True)
    sid_version = hashlib.sha256(books.tobytes()).hexdigest()[:16]
    t = pa.table({"item_id": pa.array(ids, pa.int64()),
                  "codes": pa.array(list(codes.astype(np.int32)), pa.list_(pa.int32())),
                  "token": pa.array(token.astype(np.int32), pa.int32())})
    tmp = d / "codes.parquet.tmp"
    pq.write_table(t, tmp)
    tmp.replace(d / "codes.parquet")
    save_file({"codebooks": books}, str(d / "codebooks.safetensors"))
    meta = {"encoder_version": version, "sid_version": sid_version, "levels": cfg.levels,
            "codes": cfg.codes, "dim": int(vecs.shape[1]), "n_items": int(len(ids)),
            "levels_stats": stats,
            "collisions": {"distinct_codes": int(len(shared)), "items_sharing_a_code": int(shared[shared > 1].sum()),
                           "max_token": int(token.max(initial=0))},
            "collision_rule": "items with the same full code get a last token 0, 1, ... in increasing "
                              "item id order; (codes, token) is unique",
            "point_in_time": "from item content only (the frozen representations); no behaviour read",
            "config": cfg.model_dump(), "seconds": round(time.perf_counter() - t0, 2)}
    write_text(d / "meta.json", json.dumps(meta, indent=2))
    lineage.stamp(d, _inputs(run, version), digest=sid_version)
    return meta


def has_sid(run: Path, version: str) -> bool:
    return (sid_dir(run, version) / "meta.json").exists()


def load_sid(run: Path, version: str) -> SidCodes:
    """The semantic IDs built for the table of encoder ``version``; :class:`MMRankError` when none
    were built, :class:`mmrank.lineage.StaleArtifact` when made from another catalog or table."""
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file

    run = Path(run)
    d = sid_dir(run, version)
    if not (d / "meta.json").exists():
        raise MMRankError(f"{d}: no semantic IDs for encoder version {version!r} "
                          f"(run `mmrank sid build --run {run}`)")
    lineage.check(d, _inputs(run, version), f"mmrank sid build --run {run}")
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("encoder_version") != version:
        raise ConfigError(f"{d}/meta.json: built for encoder version {meta.get('encoder_version')!r}, "
                          f"expected {version!r}; rebuild it: `mmrank sid build --run {run}`")
    t = pq.read_table(d / "codes.parquet")
    ids = t.column("item_id").to_numpy().astype(np.int64)
    codes = np.asarray(t.column("codes").to_pylist(), np.int64).reshape(len(ids), meta["levels"])
    token = t.column("token").to_numpy().astype(np.int64)
    order = np.argsort(ids)
    books = load_file(str(d / "codebooks.safetensors"))["codebooks"]
    return SidCodes(ids[order], codes[order], token[order], books, version, meta["sid_version"], meta)


def ensure_sid(run: Path, version: str, cfg: SidConfig | None = None, log=print) -> SidCodes:  # noqa: ANN001
    """:func:`load_sid`, building the codes first (with ``cfg``, default settings) when none exist."""
    if not has_sid(run, version):
        log(f"[sid] {run}: no semantic IDs for encoder version {version!r}: building them "
            f"(`mmrank sid build --run {run}`)")
        build_sid(run, cfg, version=version)
    return load_sid(run, version)


def stats_table(meta: dict):  # noqa: ANN201 (rich.table.Table)
    """Codebook usage and reconstruction error per level, as a rich table."""
    from rich.table import Table

    t = Table(title=f"semantic IDs: {meta['levels']} levels x {meta['codes']} codes, {meta['n_items']} items "
                    f"(encoder {meta['encoder_version']})")
    for col in ("level", "used codes", "perplexity", "relative MSE"):
        t.add_column(col, justify="right")
    for s in meta["levels_stats"]:
        t.add_row(str(s["level"]), f"{s['used']}/{s['codes']}", f"{s['perplexity']:.1f}", f"{s['rel_mse']:.4f}")
    return t

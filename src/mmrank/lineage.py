"""Lineage: what each artifact of a run was made from, by content hash (issue 29).

Every artifact directory holds a ``lineage.json`` beside its files (written through
:mod:`mmrank.durable`)::

    {"digest": "<16 hex>", "inputs": {"data/items": "<16 hex>", "encoder": "<version>", ...}}

* ``R/data/lineage.json`` holds one input per table: the SHA-256 of the Parquet file's bytes,
  computed once when the table is written (import, ``market generate``, ``data build``), with the
  file's size beside it; a table rewritten since by anything else (another size, or an mtime not older
  than ``lineage.json``) is re-hashed on the next read; ``digest`` is over them all. :func:`data_digests` gives ``{"data": D, "data/<table>": d, ...}``.
* Every other artifact records its parents' digests, never re-hashing big files: the encoder
  (``R/encoder``: data/items, data/pairs, data/query_images; its own digest is its version), the
  feature caches (``R/features/<key>``: the table each cached row set came from), the embeddings
  (``R/embeddings/v-<version>``: the encoder version and data/items), the CTR models
  (``R/ctr/<strategy>``: data/ctr_samples, data/items, the representations) and the re-rankers
  (``R/rerank/<model>``: data/lists, data/items, data/query_images, the representations).

:func:`check` compares what an artifact recorded with the run's inputs now: a mismatch is
:class:`StaleArtifact`, one line naming the artifact, the input that changed and the command that
rebuilds it (the CLI prints it and exits 2). An artifact made before lineage was recorded (no
``lineage.json``) is *unknown*: one note on stderr (once per process), and it is used. Refusing it
would make every run made before this version unusable until each stage is re-run (a pre-training can
take hours), for a risk the note names along with the command that removes it.

Example::

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = stamp(d, {"data/items": "ab12"})
    >>> check(d, {"data/items": "ab12"}, "mmrank embed --run R")
    True
    >>> check(d, {"data/items": "cd34"}, "mmrank embed --run R")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    mmrank.lineage.StaleArtifact: ...: made from data/items ab12, ... now cd34; rebuild it: `mmrank embed --run R`
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmrank.durable import write_text
from mmrank.errors import MMRankError

LINEAGE = "lineage.json"
HEX = 16  # digits kept of a SHA-256 (as the encoder's version id)
_noted: set[str] = set()


class StaleArtifact(MMRankError):
    """An artifact made from inputs that have changed since (one line: which, and how to rebuild it)."""


def digest_of(paths: Iterable[str | Path]) -> str:
    """SHA-256 (16 hex) over each file's name and bytes, read in 1 MiB blocks, in the order given."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:HEX]


def model_version(*paths: str | Path) -> str:
    """A trained model's version id (12 hex): SHA-256 over its files' bytes, in the order given (the id
    ``/v1/rank`` and ``/v1/rerank`` report, so a swapped model shows a new one)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:12]


def digest_inputs(inputs: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex) of a mapping of input names to digests (key order does not matter)."""
    return hashlib.sha256(json.dumps(dict(inputs), sort_keys=True).encode()).hexdigest()[:HEX]


def read(artifact_dir: str | Path) -> dict[str, Any] | None:
    """``artifact_dir/lineage.json``, or None when there is none (or it cannot be read)."""
    try:
        rec = json.loads((Path(artifact_dir) / LINEAGE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("inputs"), dict) else None


def stamp(artifact_dir: str | Path, inputs: Mapping[str, Any], digest: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """Write ``artifact_dir/lineage.json``: ``inputs`` and the artifact's own ``digest`` (default: the
    digest of its inputs). Returns the record."""
    rec = {"digest": digest or digest_inputs(inputs), "inputs": dict(sorted(inputs.items())), **extra}
    d = Path(artifact_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_text(d / LINEAGE, json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return rec


def _where(key: str) -> str:
    """Where an input lives, for a message: ``data/items`` -> ``data/items.parquet``."""
    return f"{key}.parquet" if key.startswith("data/") else key


def check(artifact_dir: str | Path, inputs: Mapping[str, Any], rebuild_command: str) -> bool:
    """True when ``artifact_dir`` was made from ``inputs`` (the keys given; others it recorded are not
    compared); False when it has no lineage (a note on stderr, once per artifact and process). Raises
    :class:`StaleArtifact` when an input differs."""
    d = Path(artifact_dir)
    rec = read(d)
    if rec is None:
        if str(d) not in _noted:
            _noted.add(str(d))
            print(f"note: {d} has no {LINEAGE} (made before lineage was recorded): it cannot be checked "
                  f"against the run's data; `{rebuild_command}` rebuilds it", file=sys.stderr)
        return False
    made = rec["inputs"]
    for key, now in inputs.items():
        if made.get(key) != now:
            was = made.get(key, "nothing")
            raise StaleArtifact(f"{d} is stale: made from {key} {was}, {_where(key)} is now {now}; "
                                f"rebuild it: `{rebuild_command}`")
    return True


def matches(artifact_dir: str | Path, inputs: Mapping[str, Any]) -> bool | None:
    """Whether ``artifact_dir`` was made from ``inputs``: True, False, or None (no lineage)."""
    rec = read(artifact_dir)
    if rec is None:
        return None
    return all(rec["inputs"].get(k) == v for k, v in inputs.items())


# ---- the data: one digest per table, hashed when written --------------------------------------------
def data_digests(run: str | Path, *, write: bool = True) -> dict[str, str]:
    """``{"data": D, "data/<table>": d, ...}`` for every ``R/data/*.parquet``, from
    ``R/data/lineage.json``. A table it lacks, whose size differs, or whose mtime is not older than the
    file's is hashed (a table rewritten since), and the file is rewritten (``write``; a read-only run is
    left as it is). The file holds no time, so equal data gives an equal file. Empty when ``R/data``
    does not exist."""
    data = Path(run) / "data"
    if not data.is_dir():
        return {}
    rec = read(data) or {"inputs": {}}
    try:
        stamped = os.stat(data / LINEAGE).st_mtime_ns
    except OSError:
        stamped = -1
    made, sizes = rec["inputs"], rec.get("bytes") or {}
    inputs: dict[str, str] = {}
    nbytes: dict[str, int] = {}
    hashed = False
    for p in sorted(data.glob("*.parquet")):
        st, key = p.stat(), f"data/{p.stem}"
        nbytes[p.stem] = st.st_size
        if key in made and sizes.get(p.stem) == st.st_size and st.st_mtime_ns < stamped:
            inputs[key] = made[key]
        else:
            inputs[key] = digest_of([p])
            hashed = True
    if write and (hashed or set(inputs) != set(made)):
        try:
            stamp(data, inputs, bytes=nbytes)
        except OSError:
            pass
    return {"data": digest_inputs(inputs), **inputs}


def stamp_data(data_dir: str | Path) -> dict[str, str]:
    """Hash the tables of ``data_dir`` (a run's ``data/``) now, as they are written; returns
    :func:`data_digests`."""
    return data_digests(Path(data_dir).parent)


def data_inputs(run: str | Path, *tables: str) -> dict[str, str]:
    """``{"data/<table>": digest}`` of the named tables that exist in ``R/data``."""
    d = data_digests(run)
    return {f"data/{t}": d[f"data/{t}"] for t in tables if f"data/{t}" in d}


def table_digest(path: str | Path) -> str | None:
    """The digest of a run's table ``R/data/<table>.parquet`` (None for a file elsewhere)."""
    p = Path(path)
    if p.suffix != ".parquet" or p.parent.name != "data" or not p.exists():
        return None
    return data_digests(p.parent.parent).get(f"data/{p.stem}")


# ---- each artifact's inputs, and the checks the stages make ------------------------------------------
ENCODER_TABLES = ("items", "pairs", "query_images")
CTR_TABLES = ("ctr_samples", "items")
RERANK_TABLES = ("lists", "items", "query_images")


def encoder_inputs(run: str | Path) -> dict[str, str]:
    """What ``R/encoder`` is made from: the catalog, the pre-training pairs and the query photos."""
    return data_inputs(run, *ENCODER_TABLES)


def embeddings_inputs(run: str | Path, version: str) -> dict[str, str]:
    """What ``R/embeddings/v-<version>`` is made from: that encoder and the catalog."""
    return {"encoder": str(version), **data_inputs(run, "items")}


def check_encoder(run: str | Path, subdir: str = "encoder") -> bool:
    """:func:`check` ``R/<subdir>`` (an encoder directory) against the run's data."""
    return check(Path(run) / subdir, encoder_inputs(run), f"mmrank pretrain --run {run}")


def check_embeddings(run: str | Path, version: str) -> bool:
    """:func:`check` the table of ``version`` against the run's catalog (and, when ``R/encoder`` is
    that version, the encoder against the run's data first: the most upstream stale artifact is named)."""
    from mmrank.store.table import version_dirname

    run = Path(run)
    enc = run / "encoder"
    if (enc / "version.txt").exists() and (enc / "version.txt").read_text().strip() == str(version):
        check_encoder(run)
    return check(run / "embeddings" / version_dirname(str(version)), embeddings_inputs(run, version),
                 f"mmrank embed --run {run}")


def stale_artifacts(run: str | Path) -> list[tuple[Path, str]]:
    """Every artifact of ``run`` whose recorded data digests differ from the run's now, with the command
    that rebuilds it (what ``data import --replace`` lists once the new data is in place)."""
    run = Path(run)
    now = data_digests(run)
    found: list[tuple[Path, str]] = []
    places = [(run / "encoder", f"mmrank pretrain --run {run}")]
    places += [(d, f"mmrank pretrain compare --run {run}") for d in sorted((run / "pretrain").glob("*"))]
    places += [(d, f"mmrank embed --run {run}") for d in sorted((run / "embeddings").glob("v-*"))]
    places += [(d, f"mmrank ctr train --run {run} --strategy {d.name}") for d in sorted((run / "ctr").glob("*"))]
    places += [(d, f"mmrank rerank train --run {run} --model {d.name}") for d in sorted((run / "rerank").glob("*"))]
    for d, cmd in places:
        rec = read(d)
        if rec is None:
            continue
        made = {k: v for k, v in rec["inputs"].items() if k.startswith("data/")}
        if any(now.get(k) != v for k, v in made.items()):
            found.append((d, cmd))
    return found

"""Open or create the embedding table of a run on the backend its ``STORE.json`` names.

``local`` (the embedded default, :class:`~mmrank.store.local.LocalTable`) unless
``R/embeddings/STORE.json`` (:func:`~mmrank.store.table.set_store_config`) says ``redis``
(:class:`~mmrank.store.redis_table.RedisTable`); the keyword arguments override the file.

Example::

    >>> t = create_table(root, version="enc-1", dim=4)            # doctest: +SKIP
    >>> t.put(np.array([7, 9]), vecs, version="enc-1"); t.publish() # doctest: +SKIP
    >>> open_table(root).get(np.array([9]))                       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from mmrank.errors import ConfigError, MMRankError
from mmrank.store.local import LocalTable
from mmrank.store.redis_table import RedisTable
from mmrank.store.table import CURRENT, EmbeddingTable, store_config

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _backend(root: Path, backend: str | None, url: str | None,
             namespace: str | None) -> tuple[type[EmbeddingTable], dict]:
    """The table class and its connection keywords for the tables under ``root``."""
    cfg = store_config(root)
    name = backend or cfg.get("backend", "local")
    if name == "local":
        return LocalTable, {}
    if name == "redis":
        return RedisTable, {"url": url or cfg.get("url") or DEFAULT_REDIS_URL,
                            "namespace": namespace or cfg.get("namespace")}
    raise ConfigError(f"embedding table backend: expected local or redis, got {name!r}")


def open_table(root: str | Path, version: str | None = None, *, writable: bool = False,
               backend: str | None = None, url: str | None = None,
               namespace: str | None = None) -> EmbeddingTable:
    """Open the table of ``version`` (default: the CURRENT one) under ``root``.

    Raises :class:`MMRankError` if there is no such table.
    """
    root = Path(root)
    cls, kw = _backend(root, backend, url, namespace)
    if version is None:
        version = cls.current_version(root, **kw)
        if version is None:
            raise MMRankError(f"{root}: no embedding table yet (no {CURRENT}); "
                              f"run `mmrank embed --run <R>` first")
    return cls.open_version(root, version, writable=writable, **kw)


def create_table(root: str | Path, *, version: str, dim: int, encoder_name: str = "",
                 backend: str | None = None, url: str | None = None,
                 namespace: str | None = None) -> EmbeddingTable:
    """Open the table of ``version`` for writing, creating it if needed (not made CURRENT)."""
    root = Path(root)
    if dim <= 0:
        raise ConfigError(f"embedding dim: expected > 0, got {dim}")
    cls, kw = _backend(root, backend, url, namespace)
    return cls.create_version(root, version, dim, encoder_name, **kw)


def table_versions(root: str | Path, *, backend: str | None = None, url: str | None = None,
                   namespace: str | None = None) -> list[str]:
    """Every encoder version with a table under ``root``."""
    cls, kw = _backend(Path(root), backend, url, namespace)
    return cls.versions(Path(root), **kw)


def current_version(root: str | Path, *, backend: str | None = None, url: str | None = None,
                    namespace: str | None = None) -> str | None:
    """The CURRENT version under ``root`` (None if nothing was published)."""
    cls, kw = _backend(Path(root), backend, url, namespace)
    return cls.current_version(Path(root), **kw)

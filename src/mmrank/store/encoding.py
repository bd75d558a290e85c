"""Encoding items for the store: what an encoder must offer, the input checks that name the bad row,
and the items file read in batches.

The encoder is any object with the interface of ``mmrank.pretrain.load_item_encoder(run)``:
``version``, ``dim``, ``name``, ``encode_items(titles, images)``, ``encode_text(texts)``,
``encode_images(images)``, each returning ``(N, dim)`` float32, L2-normalised
(:class:`mmrank.store.tiny_encoder.TinyItemEncoder` is a small real one).

Example::

    >>> vecs = encode_checked(encoder, ["red shirt"], [jpeg], where="items.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmrank.data.io import decode_image, iter_items
from mmrank.errors import DataError, MMRankError


class ItemEncoder(Protocol):
    """What the store needs of an encoder (``mmrank.pretrain.load_item_encoder`` returns one)."""

    version: str
    dim: int
    name: str

    def encode_items(self, titles: list[str], images: list[bytes]) -> np.ndarray: ...
    def encode_text(self, texts: list[str]) -> np.ndarray: ...
    def encode_images(self, images: list[bytes]) -> np.ndarray: ...


def load_encoder(run: Path, device: Any = None, bf16: bool = False, pin_memory: bool = True) -> ItemEncoder:
    """The run's item encoder (``R/encoder/``), via ``mmrank.pretrain.load_item_encoder``, on
    ``device`` (a torch device or auto | cpu | cuda | cuda:N; None: the CPU), with bf16 autocast there
    when ``bf16`` and it is CUDA (batches from pinned host memory when ``pin_memory``)."""
    try:
        from mmrank.pretrain.item_encoder import load_item_encoder
    except ImportError as err:
        raise MMRankError(f"no item encoder available (mmrank.pretrain: {err})") from None
    return load_item_encoder(run, device=device, bf16=bf16, pin_memory=pin_memory)


def check_title(title: Any, where: str, row: int | None) -> str:
    """``title`` if it is a non-blank string; else :class:`DataError` naming ``where``/``row``."""
    if not isinstance(title, str) or not title.strip():
        raise DataError(f"empty title (got {title!r})", file=where, row=row, column="title")
    return title


def find_bad_image(images: list[bytes], where: str, offset: int, column: str = "image") -> None:
    """Raise :class:`DataError` naming the first missing or undecodable image, if any."""
    for i, b in enumerate(images):
        if not isinstance(b, (bytes, bytearray)) or not b:
            raise DataError("no image bytes", file=where, row=offset + i, column=column)
        try:
            decode_image(bytes(b))
        except ValueError as err:
            raise DataError(str(err), file=where, row=offset + i, column=column) from None


def encode_checked(encoder: ItemEncoder, titles: list[str], images: list[bytes], where: str,
                   offset: int = 0) -> np.ndarray:
    """``encoder.encode_items`` with errors that name the row: ``(N,)`` -> ``(N, dim)`` float32."""
    for i, t in enumerate(titles):
        check_title(t, where, offset + i)
    try:
        vecs = encoder.encode_items(titles, images)
    except Exception as err:
        find_bad_image(images, where, offset)
        raise MMRankError(f"{where}: encoder {encoder.name!r} failed on rows {offset}.."
                          f"{offset + len(titles) - 1}: {type(err).__name__}: {err}") from err
    vecs = np.asarray(vecs)
    if vecs.shape != (len(titles), encoder.dim):
        raise DataError(f"encoder {encoder.name!r} returned shape {vecs.shape}, expected "
                        f"({len(titles)}, {encoder.dim})", file=where, row=offset, column="vector")
    return vecs


def catalog_batches(path: Path, batch_size: int) -> Iterator[tuple[int, np.ndarray, list, list]]:
    """``(row offset, ids, titles, images)`` per record batch of the items file (images as bytes,
    however each row gives them: :func:`mmrank.data.io.iter_items`)."""
    offset = 0
    for batch in iter_items(path, ["item_id", "title"], batch_size=batch_size):
        ids = batch.column("item_id").to_numpy()
        yield offset, ids, batch.column("title").to_pylist(), batch.column("image").to_pylist()
        offset += len(ids)

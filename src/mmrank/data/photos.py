"""Item photos as the data gives them: the grey placeholder of an item without one, and their sizes.

The image size a run encodes at is taken from the catalog's real photos, never from one item (that
item may hold the placeholder): :func:`median_side` is the median of the photos' larger side,
placeholders excluded.

Example::

    >>> median_side([placeholder_image()]) is None
    True
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np

_GREY: list[bytes] = []
PLACEHOLDER_SIDE = 32


def placeholder_image() -> bytes:
    """A 32x32 mid-grey JPEG: the photo of an item that has none (counted, and labelled)."""
    if not _GREY:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (PLACEHOLDER_SIDE, PLACEHOLDER_SIDE), (128, 128, 128)).save(buf, "JPEG", quality=90)
        _GREY.append(buf.getvalue())
    return _GREY[0]


def is_placeholder(data: bytes | None) -> bool:
    return data is None or data == placeholder_image()


def photo_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header (nothing decoded), None when unreadable."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).size
    except Exception:  # PIL raises several types for bad bytes
        return None


def real_sides(blobs: Iterable[bytes | None], limit: int = 5000) -> np.ndarray:
    """The larger side of up to ``limit`` real photos (placeholders and unreadable bytes skipped),
    taken evenly over the catalog."""
    blobs = list(blobs)
    step = max(1, len(blobs) // limit)
    sides = []
    for b in blobs[::step]:
        if is_placeholder(b):
            continue
        wh = photo_size(b)
        if wh is not None:
            sides.append(max(wh))
    return np.asarray(sides, np.int64)


def median_side(blobs: Iterable[bytes | None], cap: int | None = None) -> int | None:
    """The median larger side of the real photos, capped at ``cap``; None when there is none."""
    sides = real_sides(blobs)
    if not len(sides):
        return None
    side = int(np.median(sides))
    return min(side, cap) if cap else side

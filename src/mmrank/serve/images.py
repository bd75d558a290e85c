"""What an uploaded image may cost, checked before any pixel is decoded.

The imaging library reads only the header on open (``PIL.Image.open`` is lazy), so the declared
width x height is known for the price of a few bytes: a 190 KB PNG that declares 13,000 x 13,000
pixels is refused here in milliseconds instead of costing seconds of decoding.
"""

from __future__ import annotations

import base64
import io

from mmrank.errors import DataError


class TooLarge(DataError):
    """An image over the byte or pixel cap (the app answers 413)."""


def check_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> bytes:
    """``data`` if it is at most ``max_bytes`` long and its header declares at most ``max_pixels``
    pixels; :class:`TooLarge` otherwise, :class:`DataError` when the header is not an image's."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise TooLarge(f"image of {len(data)} bytes is over the limit of {max_bytes} bytes", column=field)
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise DataError("not a JPEG or PNG image (unreadable header)", column=field) from None
    except Image.DecompressionBombError:
        w, h = 1 << 20, 1 << 20
    if w * h > max_pixels:
        raise TooLarge(f"image of {w} x {h} pixels is over the limit of {max_pixels:,} pixels "
                       f"(send a smaller photo)", column=field)
    return data


def decode_checked(text: str, field: str, max_bytes: int, max_pixels: int) -> bytes:
    """Base64 text -> image bytes, checked by :func:`check_image`; raises before decoding anything
    when the text alone is over the byte cap."""
    if len(text) > 4 * ((max_bytes + 2) // 3) + 4:
        raise TooLarge(f"image of about {len(text) * 3 // 4} bytes is over the limit of {max_bytes} bytes",
                       column=field)
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise DataError("not valid base64", column=field) from None
    return check_image(data, field, max_bytes, max_pixels)

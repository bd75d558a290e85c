"""The market's content space: what an item's photo and title show, as a vector the behaviour model reads.

The space is a fixed function of an item, and none of mmrank's encoders:

* ``pixel_statistics``: colour and shape statistics of a product photo on a light background: the
  object's mean lightness and two opponent colour axes, its chroma, the share of the frame it covers,
  its height/width ratio and its texture (mean gradient inside the object), followed by fixed random
  projections of the photo downsampled to 8x8 (its layout) and of what 16x16 adds to that (its detail).
* ``beyond_type``: a real catalog's content latent from those statistics, built as the synthetic market's
  is: the photo's colour as it is, and its shape, layout and detail against the typical photo of its
  article type (the statistic minus its mean over the type). The type itself enters the content space
  through its column, so a shoe and a shirt still differ; what the continuous part adds is how this
  shoe looks among shoes, as the synthetic latent's proportions vary within a type.
* ``content_space``: the behaviour model's vector per item: the continuous part (the synthetic market's
  rendered latent, or a real photo's statistics beyond its type) next to fixed random embeddings of the coarse
  attribute columns, each dimension standardised and the whole scaled to ``REFERENCE_DIMS`` of total
  variance, so that a kernel bandwidth means the same on every catalog. Which dimensions photos show and which titles show
  is returned beside it, so that regions can weigh the two differently.

Example::

    >>> import numpy as np
    >>> from mmrank.data.content import standardise
    >>> standardise(np.array([[1.0], [3.0]])).ravel().tolist()
    [-1.0, 1.0]
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

PIXEL_STATS = ("lightness", "red_green", "yellow_blue", "chroma", "coverage", "aspect", "texture",
               "layout_0", "layout_1", "layout_2", "layout_3") + tuple(f"detail_{i}" for i in range(8))
# The content space's total variance on every catalog (the synthetic market's 10 dimensions at unit
# variance each): a catalog with more statistics gets each dimension scaled down, not a wider space.
REFERENCE_DIMS = 10
# A fixed projection of an 8x8 RGB thumbnail (192 values) to 4 layout dimensions.
_LAYOUT = np.random.default_rng(20240817).normal(size=(192, 4)) / np.sqrt(192)
# ... and of the detail a 16x16 thumbnail adds to the 8x8 one (768 values: prints, stripes, folds, which
# vary among items of the same type and colour) to 8 detail dimensions.
_DETAIL = np.random.default_rng(20261202).normal(size=(768, 8)) / np.sqrt(768)


def _thumbnail(img: np.ndarray, side: int) -> np.ndarray:
    small = Image.fromarray((img * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    return np.asarray(small, dtype=np.float64) / 255.0


def _stats_one(data: bytes) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255.0
    # The object: pixels clearly darker or more coloured than the (near-white) background.
    grey = img.mean(axis=2)
    spread = img.max(axis=2) - img.min(axis=2)
    mask = (grey < 0.86) | (spread > 0.12)
    if mask.sum() < 8:  # a white object on white: take the whole frame
        mask = np.ones_like(mask)
    px = img[mask]
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    rg, yb = r - g, (r + g) / 2 - b
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    gy, gx = np.gradient(grey)
    texture = np.hypot(gx, gy)[mask].mean()
    thumb8, thumb16 = _thumbnail(img, 8), _thumbnail(img, 16)
    layout = (thumb8.reshape(-1) - thumb8.mean()) @ _LAYOUT
    detail = (thumb16 - np.repeat(np.repeat(thumb8, 2, axis=0), 2, axis=1)).reshape(-1) @ _DETAIL
    return np.concatenate([[grey[mask].mean(), rg.mean(), yb.mean(), np.hypot(rg, yb).mean(),
                            mask.mean(), np.log(h / w), texture], layout, detail])


def _stats_chunk(chunk: list[bytes]) -> np.ndarray:
    return np.stack([_stats_one(b) for b in chunk])


def pixel_statistics(images: list[bytes], workers: int = 2, chunk: int = 1000) -> np.ndarray:
    """(N, 19) colour, shape, layout and detail statistics of ``images`` (JPEG/PNG bytes), columns ``PIXEL_STATS``."""
    chunks = [images[i:i + chunk] for i in range(0, len(images), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        parts = [_stats_chunk(c) for c in chunks]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_stats_chunk, chunks))
    return np.concatenate(parts) if parts else np.zeros((0, len(PIXEL_STATS)))


COLOUR_STATS = 4  # lightness, red_green, yellow_blue, chroma: kept as the photo shows them


def beyond_type(stats: np.ndarray, type_codes: np.ndarray) -> np.ndarray:
    """``stats`` (N, len(PIXEL_STATS)) with the shape, layout and detail columns centred per article type.

    Example::

        >>> import numpy as np
        >>> s = np.zeros((3, len(PIXEL_STATS))); s[:, 4] = [1.0, 3.0, 5.0]
        >>> beyond_type(s, np.array([0, 0, 1]))[:, 4].tolist()
        [-1.0, 1.0, 0.0]
    """
    codes = np.asarray(type_codes, np.int64)
    n = int(codes.max()) + 1 if len(codes) else 0
    count = np.maximum(np.bincount(codes, minlength=n), 1)
    shape = stats[:, COLOUR_STATS:]
    means = np.stack([np.bincount(codes, weights=shape[:, j], minlength=n) for j in range(shape.shape[1])],
                     axis=1) / count[:, None]
    return np.concatenate([stats[:, :COLOUR_STATS], shape - means[codes]], axis=1)


def standardise(x: np.ndarray) -> np.ndarray:
    """Each column to mean 0 and standard deviation 1 (a constant column stays 0)."""
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def content_space(continuous: np.ndarray, codes: dict[str, np.ndarray], dims: dict[str, int],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The behaviour model's content vectors.

    Args:
        continuous: (N, C) what the photo shows beyond the columns (latent or pixel statistics).
        codes: attribute name -> (N,) integer codes of a coarse column.
        dims: attribute name -> how many dimensions its fixed random embedding gets.
        rng: draws the embeddings.

    Returns:
        ``(V, from_photo)``: V (N, C + sum(dims)), each dimension standardised and then scaled by
        ``content_scale(D)``; ``from_photo`` (D,) bool, True for the
        dimensions photos show (the continuous part), False for those titles name (the columns).
    """
    parts, photo = [continuous], [np.ones(continuous.shape[1], bool)]
    for name, d in dims.items():
        emb = rng.normal(size=(int(codes[name].max()) + 1, d))
        parts.append(emb[codes[name]])
        photo.append(np.zeros(d, bool))
    v = standardise(np.concatenate(parts, axis=1))
    return v * content_scale(v.shape[1]), np.concatenate(photo)


def content_scale(d: int) -> float:
    """Per-dimension scale of a ``d``-dimensional content space (1.0 at ``REFERENCE_DIMS``)."""
    return float(np.sqrt(REFERENCE_DIMS / d))

"""Image-text co-augmentation without an MLLM (MOON2.0's co-augmentation, issue 20 part 4).

* **Text enrichment**: each item gets template titles written from its own *visible* attributes, the
  columns of ``R/data/items.parquet`` named in :data:`ATTRIBUTES` (type, colour, pattern, style,
  usage, ...). Nothing under ``R/truth/`` is read: the hidden market fields never reach a title.
* **Visual expansion**: augmented views of the item's photo. Geometry only, so colour-bearing
  attributes stay true: view 1 is the horizontal flip, view 2 a centre-shifted crop of 80% of each
  side (offset fixed by the item id), view 3 that crop flipped (:data:`VIEWS`). No colour jitter,
  grayscale, hue or brightness change.

Both go through the frozen backbones once: their features are cached by the encoder cache
(:func:`mmrank.encoders.cache.cached_features`) under ``R/features/<encoder>/items_image_view<v>`` and
``items_title_aug<t>``, next to the original ``items_image`` / ``items_title`` (view 0, title 0).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmrank.pretrain.data import Catalog, Features, item_feature_keys

# Visible attribute columns used by the templates, in the order they are written (those present).
ATTRIBUTES = ("article_type", "category", "sub_category", "colour", "color", "base_colour", "pattern",
              "material", "style", "usage", "season", "gender")
# The augmented photo views (view 0 is the photo itself). Colour-preserving: geometry only.
VIEWS = {1: "horizontal flip", 2: "80% crop (offset by item id)", 3: "80% crop + horizontal flip"}
MAX_VIEWS = 4


def item_attributes(catalog: Catalog) -> list[dict[str, str]]:
    """Per item (catalog row order): its visible attribute values from ``items.parquet`` (strings,
    non-empty), for the :data:`ATTRIBUTES` columns the file has."""
    import pyarrow.parquet as pq

    names = pq.read_schema(catalog.path).names
    cols = [c for c in ATTRIBUTES if c in names]
    if not cols:
        return [{} for _ in catalog.item_ids]
    t = pq.read_table(catalog.path, columns=["item_id", *cols])
    if not np.array_equal(t.column("item_id").to_numpy().astype(np.int64), catalog.item_ids):
        from mmrank.errors import DataError

        raise DataError("item rows changed while reading attributes", file=str(catalog.path),
                        column="item_id")
    values = {c: t.column(c).to_pylist() for c in cols}
    out = []
    for r in range(len(catalog.item_ids)):
        out.append({c: str(values[c][r]).strip() for c in cols
                    if values[c][r] is not None and str(values[c][r]).strip()})
    return out


def _kind(a: dict[str, str]) -> str:
    return a.get("article_type") or a.get("sub_category") or a.get("category") or "item"


def _colour(a: dict[str, str]) -> str:
    return a.get("colour") or a.get("color") or a.get("base_colour") or ""


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p).strip()


# Title templates over the visible attributes; template 0 is the original title.
TEMPLATES = (
    lambda t, a: _join(_colour(a), a.get("pattern", ""), a.get("material", ""), _kind(a)),
    lambda t, a: _join(_kind(a), "in", _colour(a) or "any colour",
                       *(f"{a[k]} {k}" for k in ("pattern", "style", "usage") if k in a)),
    lambda t, a: _join(t, "|", *(a[k] for k in ATTRIBUTES if k in a)),
    lambda t, a: _join(a.get("style", ""), a.get("usage", ""), a.get("gender", ""), _kind(a)),
    lambda t, a: _join(_kind(a), "-", t),
)


def enriched_titles(catalog: Catalog, n: int) -> list[list[str]]:
    """``n`` title lists (each one per item): the original titles, then ``n - 1`` templates over the
    item's visible attributes (an item without attributes keeps its title)."""
    attrs = item_attributes(catalog)
    out = [list(catalog.titles)]
    for tpl in TEMPLATES[:max(0, n - 1)]:
        out.append([tpl(t, a) or t for t, a in zip(catalog.titles, attrs)])
    return out


def augment_view(image: bytes, view: int, item_id: int):
    """Photo ``image`` (JPEG/PNG bytes) as augmented view ``view`` (:data:`VIEWS`), a PIL RGB image;
    deterministic in ``(item_id, view)``. Never changes a pixel's colour, only where it is."""
    from PIL import Image, ImageOps

    if not isinstance(image, (bytes, bytearray)):  # no photo: left as the original row has it
        return image
    img = Image.open(io.BytesIO(image)).convert("RGB")
    if view in (2, 3):
        w, h = img.size
        cw, ch = max(1, int(round(0.8 * w))), max(1, int(round(0.8 * h)))
        d = hashlib.sha256(f"{item_id}:{view}".encode()).digest()
        x0 = d[0] * (w - cw) // 255
        y0 = d[1] * (h - ch) // 255
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    if view in (1, 3):
        img = ImageOps.mirror(img)
    return img


@dataclass
class AugmentedFeatures:
    """Backbone features of every item's views and titles: ``images`` (V, N, ...), ``titles``
    (T, N, d_text); index 0 is the original (the same rows as :class:`Features`)."""

    images: torch.Tensor
    titles: torch.Tensor


def build_augmented(run: Path, catalog: Catalog, feats: Features, image_encoder: str,
                    text_encoder: str, image_size: int, trainable_blocks: int, views: int,
                    titles: int, cache: bool = True) -> AugmentedFeatures:
    """Encode (or read from ``R/features/``) ``views - 1`` augmented views and ``titles - 1``
    enriched titles per item; the originals come from ``feats``."""
    from mmrank import encoders
    from mmrank.encoders.cache import cache_key, cached_features, source_fingerprint
    from mmrank.errors import ConfigError

    if not 1 <= views <= MAX_VIEWS:
        raise ConfigError(f"coaug_views: expected 1..{MAX_VIEWS}, got {views}")
    cache_dir = Path(run) / "features" if cache else None
    fp = source_fingerprint(catalog.path)
    ikey = cache_key(image_encoder, "image", image_size, trainable_blocks)
    tkey = cache_key(text_encoder, "text", None, 0)
    id_keys, _ = item_feature_keys(catalog.item_ids, catalog.titles)
    built: dict[str, tuple] = {}

    def tower(kind: str):
        def build() -> tuple:
            if kind not in built:
                built[kind] = (encoders.create_tower(image_encoder, "image", image_size=image_size,
                                                     trainable_blocks=trainable_blocks)
                               if kind == "image" else encoders.create_tower(text_encoder, "text"))
            return built[kind]
        return build

    imgs = [feats.item_img]
    for v in range(1, views):
        def inputs(a: int, z: int, v: int = v) -> list:
            return [augment_view(catalog.images[r], v, int(catalog.item_ids[r])) for r in range(a, z)]
        arr = cached_features(tower("image"), ikey, [f"{k}\tview{v}" for k in id_keys], inputs,
                              cache_dir, f"items_image_view{v}", fp)
        imgs.append(torch.from_numpy(np.ascontiguousarray(arr)))
    txts = [feats.item_txt]
    for t, texts in enumerate(enriched_titles(catalog, titles)[1:], start=1):
        arr = cached_features(tower("text"), tkey, [f"{k}\t{s}" for k, s in zip(id_keys, texts)],
                              lambda a, z, texts=texts: texts[a:z], cache_dir, f"items_title_aug{t}", fp)
        txts.append(torch.from_numpy(np.ascontiguousarray(arr)))
    return AugmentedFeatures(torch.stack(imgs), torch.stack(txts))

"""Procedural product photos and titles for the synthetic market, and "user photos" for image queries.

A photo shows an item's attributes and its continuous content latent (:class:`Look`): the article type
as a silhouette whose length and width vary, the colour as its fill, shifted in lightness, saturation
and hue, the pattern drawn inside it at a varying density, a contrasting trim band of varying depth,
the style as an accent; plus per-item jitter and noise. A title says the coarse attributes in words,
with synonyms, brand words and noise, and names the latent only where it is extreme ("dark", "long",
"oversized", "contrast trim"), as shop titles do.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

# Article types and their silhouettes: polygons in a unit square (x right, y down).
ARTICLE_TYPES: dict[str, list[tuple[float, float]]] = {
    "tshirt": [(.3, .15), (.42, .12), (.58, .12), (.7, .15), (.9, .32), (.78, .42), (.7, .36), (.7, .88),
               (.3, .88), (.3, .36), (.22, .42), (.1, .32)],
    "shirt": [(.32, .1), (.5, .18), (.68, .1), (.85, .2), (.9, .7), (.78, .7), (.72, .35), (.72, .92),
              (.28, .92), (.28, .35), (.22, .7), (.1, .7), (.15, .2)],
    "dress": [(.4, .08), (.6, .08), (.62, .35), (.85, .92), (.15, .92), (.38, .35)],
    "trousers": [(.28, .08), (.72, .08), (.78, .92), (.58, .92), (.5, .35), (.42, .92), (.22, .92)],
    "shorts": [(.22, .25), (.78, .25), (.85, .7), (.56, .72), (.5, .5), (.44, .72), (.15, .7)],
    "skirt": [(.35, .2), (.65, .2), (.88, .82), (.12, .82)],
    "jacket": [(.3, .1), (.7, .1), (.92, .3), (.92, .88), (.76, .88), (.74, .45), (.74, .92), (.26, .92),
               (.26, .45), (.24, .88), (.08, .88), (.08, .3)],
    "sneakers": [(.08, .55), (.35, .5), (.55, .35), (.7, .38), (.92, .62), (.92, .75), (.08, .75)],
    "boots": [(.3, .1), (.55, .1), (.55, .58), (.9, .68), (.9, .85), (.3, .85)],
    "handbag": [(.15, .38), (.85, .38), (.8, .88), (.2, .88)],
    "backpack": [(.25, .15), (.75, .15), (.82, .3), (.82, .9), (.18, .9), (.18, .3)],
    "cap": [(.2, .6), (.25, .38), (.4, .25), (.6, .25), (.75, .38), (.8, .55), (.95, .62), (.95, .7),
            (.2, .7)],
}
TYPE_WORDS: dict[str, list[str]] = {
    "tshirt": ["t-shirt", "tee", "tshirt"], "shirt": ["shirt", "button-down", "oxford shirt"],
    "dress": ["dress", "frock", "gown"], "trousers": ["trousers", "pants", "chinos"],
    "shorts": ["shorts", "bermudas"], "skirt": ["skirt", "midi skirt"],
    "jacket": ["jacket", "coat", "blazer"], "sneakers": ["sneakers", "trainers", "running shoes"],
    "boots": ["boots", "ankle boots"], "handbag": ["handbag", "purse", "tote"],
    "backpack": ["backpack", "rucksack"], "cap": ["cap", "baseball cap", "hat"],
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40), "blue": (35, 70, 190), "green": (40, 150, 60), "black": (25, 25, 25),
    "white": (240, 240, 235), "yellow": (235, 200, 30), "pink": (235, 120, 170),
    "grey": (130, 130, 135), "brown": (120, 75, 40), "purple": (120, 50, 150),
}
COLOUR_WORDS: dict[str, list[str]] = {
    "red": ["red", "crimson", "scarlet"], "blue": ["blue", "navy", "cobalt"],
    "green": ["green", "olive", "emerald"], "black": ["black", "jet black"],
    "white": ["white", "ivory", "off-white"], "yellow": ["yellow", "mustard"],
    "pink": ["pink", "rose"], "grey": ["grey", "gray", "charcoal"], "brown": ["brown", "tan", "camel"],
    "purple": ["purple", "violet", "plum"],
}
PATTERNS = ["solid", "stripes", "dots", "checks"]
PATTERN_WORDS: dict[str, list[str]] = {
    "solid": ["plain", "solid", ""], "stripes": ["striped", "stripe"], "dots": ["polka dot", "dotted"],
    "checks": ["checked", "plaid", "check"],
}
STYLES = ["casual", "formal", "sport", "party"]
STYLE_WORDS: dict[str, list[str]] = {
    "casual": ["casual", "everyday", "relaxed"], "formal": ["formal", "office", "classic"],
    "sport": ["sports", "active", "athletic"], "party": ["party", "evening", "festive"],
}
BRANDS = ["Acme", "Nordik", "Velo", "Kasa", "Urbano", "Lumen", "Orla", "Brio", "Tessa", "Mondo",
          "Ferro", "Zuma", "Kite", "Alto", "Pino", "Roux", "Sable", "Vanta", "Quill", "Hale"]
NOISE_WORDS = ["new", "2024", "slim fit", "regular fit", "for men", "for women", "unisex", "premium",
               "cotton", "limited", "bestseller", "soft"]


LATENT_NAMES = ("lightness", "saturation", "hue_shift", "length", "width", "trim")


class Look:
    """The continuous content latent of one synthetic item, each value in [-1, 1].

    ``lightness`` mixes the fill toward white (+) or black (-); ``saturation`` toward vivid (+) or grey
    (-); ``hue_shift`` rotates the hue by up to 30 degrees; ``length`` and ``width`` stretch the
    silhouette; ``trim`` sets the depth of a contrasting band at the hem (none at -1).
    """

    __slots__ = LATENT_NAMES

    def __init__(self, values: np.ndarray | tuple[float, ...] | None = None) -> None:
        v = np.zeros(len(LATENT_NAMES)) if values is None else np.asarray(values, dtype=np.float64)
        for name, x in zip(LATENT_NAMES, v):
            setattr(self, name, float(np.clip(x, -1.0, 1.0)))


def shaded_colour(colour: str, look: Look) -> tuple[int, int, int]:
    """The fill colour of ``colour`` after the look's lightness, saturation and hue shift."""
    import colorsys

    r, g, b = (c / 255.0 for c in COLOURS[colour])
    h, lum, sat = colorsys.rgb_to_hls(r, g, b)
    h = (h + look.hue_shift * 30.0 / 360.0) % 1.0
    sat = float(np.clip(sat * (1.0 + 0.6 * look.saturation), 0.0, 1.0))
    lum = lum + (0.85 - lum) * look.lightness if look.lightness > 0 else lum * (1 + 0.75 * look.lightness)
    r, g, b = colorsys.hls_to_rgb(h, float(np.clip(lum, 0.0, 1.0)), sat)
    return int(r * 255), int(g * 255), int(b * 255)


LATENT_WORDS: dict[str, tuple[list[str], list[str]]] = {  # (words for -1 end, words for +1 end)
    "lightness": (["dark", "deep"], ["light", "pale", "pastel"]),
    "saturation": (["muted", "washed"], ["bright", "vivid"]),
    "length": (["cropped", "short"], ["long", "maxi"]),
    "width": (["slim", "fitted"], ["oversized", "loose", "wide"]),
    "trim": ([], ["contrast trim", "colour-block"]),
}


def _rng_for(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def render_item_image(type_name: str, colour: str, pattern: str, style: str, seed: int,
                      size: int = 64, look: Look | None = None) -> bytes:
    """Draw one product photo as JPEG bytes. Deterministic in its arguments."""
    look = look or Look()
    rng = _rng_for(seed, 0xC0FFEE)
    s = size * 2  # draw at 2x, then downsample (anti-aliasing)
    bg = int(rng.integers(225, 250))
    img = Image.new("RGB", (s, s), (bg, bg, bg))
    scale = rng.uniform(0.78, 0.86)  # leaves room for the longest and widest looks
    sx = scale * (1.0 + 0.25 * look.width)   # width: slim .. oversized
    sy = scale * (1.0 + 0.3 * look.length)  # length: cropped .. long
    dx, dy = rng.uniform(-0.04, 0.04, size=2)
    poly = [((x - .5) * sx + .5 + dx, (y - .5) * sy + .5 + dy) for x, y in ARTICLE_TYPES[type_name]]
    poly_px = [(x * s, y * s) for x, y in poly]
    base = np.array(shaded_colour(colour, look), dtype=np.float64) + rng.normal(0, 5, size=3)
    fill = tuple(int(v) for v in np.clip(base, 0, 255))
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).polygon(poly_px, fill=255)
    body = Image.new("RGB", (s, s), fill)
    draw = ImageDraw.Draw(body)
    alt = tuple(int(v) for v in np.clip(255 - np.asarray(fill) * 0.6, 0, 255))
    step = int(rng.integers(9, 14))
    if pattern == "stripes":
        for y in range(0, s, step):
            draw.rectangle([0, y, s, y + step // 3], fill=alt)
    elif pattern == "dots":
        for y in range(step // 2, s, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, s, step):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=alt)
    elif pattern == "checks":
        for v in range(0, s, step):
            draw.rectangle([v, 0, v + 2, s], fill=alt)
            draw.rectangle([0, v, s, v + 2], fill=alt)
    xs = [p[0] for p in poly_px]
    ys = [p[1] for p in poly_px]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    depth = (look.trim + 1.0) / 2.0 * 0.45  # trim: a contrasting band over the lowest 0-45% of the body
    if depth > 0.02:
        draw.rectangle([0, min(y1 - depth * (y1 - y0), s - 1), s, s], fill=alt)
    img.paste(body, (0, 0), mask)
    top = ImageDraw.Draw(img)
    if style == "formal":  # a thin dark outline
        top.line(poly_px + [poly_px[0]], fill=(20, 20, 30), width=3)
    elif style == "sport":  # a bright diagonal band
        top.line([(x0 + 4, y1 - 6), (x1 - 4, y0 + (y1 - y0) * 0.45)], fill=(255, 255, 255), width=5)
    elif style == "party":  # gold sparkles
        for _ in range(6):
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            top.regular_polygon((cx, cy, 4), 4, rotation=45, fill=(250, 210, 60))
    img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 4, size=(size, size, 3))
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_title(type_name: str, colour: str, pattern: str, style: str, brand: str,
               rng: np.random.Generator, look: Look | None = None) -> str:
    """A product title from the attributes: synonyms, brand words, optional words and noise.

    The look is named only where a value is extreme (|x| > 0.5), and then with probability 0.7.
    """
    def pick(words: list[str]) -> str:
        return words[int(rng.integers(len(words)))]

    look = look or Look()
    fit = []
    for name, (low, high) in LATENT_WORDS.items():
        x = getattr(look, name)
        words = high if x > 0.5 else low if x < -0.5 else []
        if words and rng.random() < 0.7:
            fit.append(pick(words))
    parts = [brand]
    if rng.random() < 0.75:
        parts.append(pick(STYLE_WORDS[style]))
    parts += [w for w in fit if w not in ("long", "maxi", "cropped", "short", "slim", "fitted",
                                          "oversized", "loose", "wide")]
    parts.append(pick(COLOUR_WORDS[colour]))
    pat = pick(PATTERN_WORDS[pattern])
    if pat and (pattern != "solid" or rng.random() < 0.3):
        parts.append(pat)
    parts += [w for w in fit if w in ("long", "maxi", "cropped", "short", "slim", "fitted",
                                      "oversized", "loose", "wide")]
    parts.append(pick(TYPE_WORDS[type_name]))
    if rng.random() < 0.5:
        parts.append(pick(NOISE_WORDS))
    title = " ".join(p for p in parts if p)
    return title[0].upper() + title[1:]


def query_image_id(seed: int, request: int) -> str:
    """The opaque id stored in ``events.query_image`` for the photo of request ``request``.

    A hash of the market seed and the request number: it names no item.
    """
    return f"qi-{zlib.crc32(f'{int(seed)}/{int(request)}'.encode()):08x}{int(request):x}"


def render_query_image(item_image: bytes, seed: int) -> Image.Image:
    """A photo of an item "taken by the user": crop, shift, colour change and blur of its photo.

    Deterministic in ``seed``; ``item_image`` is the photographed item's shop photo.
    """
    rng = _rng_for(seed, 0xA06)
    img = Image.open(io.BytesIO(item_image)).convert("RGB")
    w, h = img.size
    frac = rng.uniform(0.75, 0.95)
    cw, ch = int(w * frac), int(h * frac)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.2))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
    arr = np.asarray(img, dtype=np.float64) * rng.uniform(0.9, 1.1, size=3)  # white balance
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    radius = rng.uniform(0.0, 1.2)
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    return img


def stable_hash(text: str) -> int:
    """A process-independent 32-bit hash (Python's ``hash`` of a str is salted per process)."""
    return zlib.crc32(text.encode())

"""Creatives in the market: K renders of each item's own photo, their hidden appeal and a creative log.

`generate_creatives` adds to an existing market run (``mmrank market generate``):

- ``R/data/creatives.parquet``: ``item_id, creative_id, k, is_default``, one column per attribute of
  :data:`~mmrank.creative.config.ATTRIBUTES` (its word, e.g. ``background="dark"``) and ``image``
  (PNG bytes of the render). Creative ``k=0`` of each item is the default (all attributes at their
  first word: light background, loose crop, no text band, no border).
- ``R/truth/creatives.parquet``: each creative's hidden appeal, ``appeal_region`` (log-odds of click
  per region) and ``appeal_taste`` (its loading on each user-taste dimension: one per attribute);
  ``R/truth/creative_users.parquet``: each user's ``taste`` (one weight per dimension). The effect of
  creative c on user u in region r is ``exp(appeal_region[c][r] + taste[u] . appeal_taste[c])``; it is
  exactly 1 for the default creative, so the market's own click probabilities are those of defaults.
- ``R/data/creative_log.parquet``: a sample of the market's logged impressions replayed with a logging
  policy that shows the default w.p. ``1 - E`` and each other creative w.p. ``E / (K - 1)``
  (``propensity`` of the shown creative and ``propensities`` of all K, summing to 1), and a click drawn
  from the impression's true click probability times the shown creative's effect (SIMULATED: the
  clicks are drawn here, independently of the market's own clicks on that impression). ``split`` is
  ``train`` for the earlier and ``test`` for the latest ``test_share`` of impressions by time.

Deterministic per seed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from mmrank.creative.config import ATTRIBUTES, CreativeConfig
from mmrank.errors import DataError

NAMES = list(ATTRIBUTES)
# every combination of the binary attributes; row 0 is the default look
COMBOS = np.array([[(i >> a) & 1 for a in range(len(NAMES))] for i in range(2 ** len(NAMES))], np.int8)


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataError("missing (make the run with `mmrank market generate` first)", file=str(path))
    return path


def render(photo: Image.Image, attrs: np.ndarray, size: int) -> Image.Image:
    """One creative of a product photo: ``attrs`` (0/1 per attribute of ATTRIBUTES) set the background
    (light/dark, replacing the photo's near-white background), the crop (loose: the whole photo at 72%
    of the canvas; tight: the product's bounding box filling it), a text band and a border."""
    bg_dark, tight, band, border = (int(v) for v in attrs)
    img = photo.convert("RGB").resize((size, size), Image.BILINEAR)
    a = np.asarray(img, np.int16)
    background = (a.min(axis=2) > 215) & ((a.max(axis=2) - a.min(axis=2)) < 20)
    fg = ~background
    if tight and fg.any():
        ys, xs = np.nonzero(fg)
        box = (max(int(xs.min()) - 1, 0), max(int(ys.min()) - 1, 0),
               min(int(xs.max()) + 2, size), min(int(ys.max()) + 2, size))
    else:
        box = (0, 0, size, size)
    scale = 0.96 if tight else 0.72
    w, h = box[2] - box[0], box[3] - box[1]
    f = scale * size / max(w, h)
    nw, nh = max(int(round(w * f)), 1), max(int(round(h * f)), 1)
    part = img.crop(box).resize((nw, nh), Image.BILINEAR)
    mask = Image.fromarray((fg[box[1]:box[3], box[0]:box[2]] * 255).astype(np.uint8)).resize(
        (nw, nh), Image.NEAREST)
    canvas = Image.new("RGB", (size, size), (38, 38, 44) if bg_dark else (244, 244, 240))
    canvas.paste(part, ((size - nw) // 2, (size - nh) // 2), mask)
    draw = ImageDraw.Draw(canvas)
    if band:
        bh = max(size // 6, 4)
        draw.rectangle((0, size - bh, size, size), fill=(196, 32, 40))
        draw.text((max(size // 16, 1), size - bh + max(bh // 8, 0)), "NEW", fill=(255, 255, 255))
    if border:
        draw.rectangle((0, 0, size - 1, size - 1), outline=(232, 190, 60) if bg_dark else (30, 30, 36),
                       width=max(size // 32, 2))
    return canvas


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def generate_creatives(cfg: CreativeConfig, run: str | Path) -> dict:
    """Write the creatives, their hidden appeal and the creative log of ``run`` (see the module doc);
    returns a summary (counts, the log's CTR and the files written)."""
    run = Path(run)
    data, truth = run / "data", run / "truth"
    rng = np.random.default_rng([cfg.seed, 22])
    items = pq.read_table(_need(data / "items.parquet"), columns=["item_id", "image"])
    users = pq.read_table(_need(data / "users.parquet"), columns=["user_id", "region"])
    item_ids = items.column("item_id").to_numpy()
    n_items, k = len(item_ids), cfg.per_item
    user_ids = users.column("user_id").to_numpy()
    n_regions = int(users.column("region").to_numpy().max()) + 1 if len(user_ids) else 1
    n_attr = len(NAMES)

    # creatives: the default plus K-1 distinct other looks per item
    combo = np.zeros((n_items, k), np.int64)
    for i in range(n_items):
        combo[i, 1:] = rng.choice(np.arange(1, len(COMBOS)), size=k - 1, replace=False)
    attrs = COMBOS[combo]                                           # (n_items, K, A)
    creative_id = np.arange(n_items * k, dtype=np.int64).reshape(n_items, k)
    images = []
    for i, blob in enumerate(items.column("image").to_pylist()):
        if blob:
            photo = Image.open(io.BytesIO(blob))
        else:
            photo = Image.new("RGB", (cfg.size, cfg.size), (244, 244, 240))
        for j in range(k):
            images.append(_png(render(photo, attrs[i, j], cfg.size)))
    flat = attrs.reshape(-1, n_attr)
    cols = {"item_id": np.repeat(item_ids, k), "creative_id": creative_id.ravel(),
            "k": np.tile(np.arange(k, dtype=np.int16), n_items), "is_default": np.tile(np.arange(k) == 0,
                                                                                         n_items)}
    for a, name in enumerate(NAMES):
        cols[name] = np.asarray(ATTRIBUTES[name])[flat[:, a]]
    table = pa.table({**{c: pa.array(v) for c, v in cols.items()}, "image": pa.array(images, pa.binary())})
    pq.write_table(table, data / "creatives.parquet")

    # hidden appeal: region liking of each attribute, the creative's own quality, user tastes
    region_w = rng.normal(0.0, cfg.region_scale, (n_regions, n_attr))
    quality = rng.normal(0.0, cfg.quality_scale, n_items * k)
    quality[::k] = 0.0                                              # the default's effect is exactly 1
    # centred so that a non-default look is no better than the default on average over regions and
    # users (E[exp(z)] = exp(var / 2) for normal z): the gain has to come from choosing per user/region
    centre = 0.5 * (flat.sum(axis=1) * (cfg.region_scale ** 2 + cfg.taste_scale ** 2)
                    + np.where(np.arange(n_items * k) % k == 0, 0.0, cfg.quality_scale ** 2))
    appeal_region = (quality - centre)[:, None] + flat @ region_w.T  # (C, R)
    appeal_taste = flat.astype(np.float64)                          # (C, A): loading per taste dimension
    taste = rng.normal(0.0, cfg.taste_scale, (len(user_ids), n_attr))
    truth.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "creative_id": creative_id.ravel(), "item_id": np.repeat(item_ids, k),
        "appeal_region": pa.array(list(appeal_region), pa.list_(pa.float64())),
        "appeal_taste": pa.array(list(appeal_taste), pa.list_(pa.float64()))}), truth / "creatives.parquet")
    pq.write_table(pa.table({"user_id": user_ids, "taste": pa.array(list(taste), pa.list_(pa.float64()))}),
                   truth / "creative_users.parquet")

    # the creative log over a sample of logged impressions
    ev = pq.read_table(_need(data / "events.parquet"),
                       columns=["ts", "user_id", "item_id", "request_id", "position", "region", "event",
                                "surface"]).to_pandas()
    ev = ev[ev["event"] == "impression"].drop(columns="event")
    slots = pq.read_table(_need(truth / "slots.parquet"),
                          columns=["request_id", "position", "p_click", "p_purchase"]).to_pandas()
    ev = ev.merge(slots, on=["request_id", "position"], how="inner", validate="one_to_one")
    if len(ev) > cfg.max_impressions:
        ev = ev.iloc[np.sort(rng.choice(len(ev), cfg.max_impressions, replace=False))]
    ev = ev.sort_values(["ts", "request_id", "position"], kind="stable").reset_index(drop=True)
    n = len(ev)
    if n == 0:
        raise DataError("no impressions to log creatives on", file=str(data / "events.parquet"))
    order = np.argsort(item_ids, kind="stable")
    pos = np.clip(np.searchsorted(item_ids[order], ev["item_id"].to_numpy()), 0, n_items - 1)
    row = order[pos]
    if (item_ids[row] != ev["item_id"].to_numpy()).any():
        bad = int(np.flatnonzero(item_ids[row] != ev["item_id"].to_numpy())[0])
        raise DataError(f"item {int(ev['item_id'].iloc[bad])} is not in items.parquet",
                        file=str(data / "events.parquet"), column="item_id")
    probs = np.full(k, cfg.exploration / (k - 1))
    probs[0] = 1.0 - cfg.exploration
    shown_k = rng.choice(k, size=n, p=probs)
    shown = creative_id[row, shown_k]
    uorder = np.argsort(user_ids, kind="stable")
    upos = uorder[np.clip(np.searchsorted(user_ids[uorder], ev["user_id"].to_numpy()), 0,
                          len(user_ids) - 1)]
    if len(user_ids) == 0 or (user_ids[upos] != ev["user_id"].to_numpy()).any():
        raise DataError("an impression's user is not in users.parquet", file=str(data / "events.parquet"),
                        column="user_id")
    effect = np.exp(appeal_region[shown, ev["region"].to_numpy().astype(np.int64)]
                    + np.einsum("na,na->n", taste[upos], appeal_taste[shown]))
    p = np.minimum(ev["p_click"].to_numpy() * effect, 0.99)
    click = (rng.random(n) < p).astype(np.int8)
    cut = np.quantile(ev["ts"].to_numpy(), 1.0 - cfg.test_share)
    split = np.where(ev["ts"].to_numpy() > cut, "test", "train")
    log = pa.table({
        "impression_id": np.arange(n, dtype=np.int64), "ts": ev["ts"].to_numpy(),
        "user_id": ev["user_id"].to_numpy(), "item_id": ev["item_id"].to_numpy(),
        "request_id": ev["request_id"].to_numpy(), "position": ev["position"].to_numpy(),
        "region": ev["region"].to_numpy(), "surface": ev["surface"].to_numpy(),
        "creative_id": shown, "shown_k": shown_k.astype(np.int16), "propensity": probs[shown_k],
        "propensities": pa.array([probs] * n, pa.list_(pa.float64())), "click": click, "split": split})
    pq.write_table(log, data / "creative_log.parquet")
    summary = {"items": n_items, "creatives": int(n_items * k), "per_item": k,
               "exploration": cfg.exploration, "exploration_note": "assumed share of non-default "
               "creatives shops show (not measured)", "impressions": n,
               "train": int((split == "train").sum()), "test": int((split == "test").sum()),
               "log_ctr": float(click.mean()), "seed": cfg.seed,
               "files": [str(data / "creatives.parquet"), str(data / "creative_log.parquet"),
                         str(truth / "creatives.parquet"), str(truth / "creative_users.parquet")]}
    (data / "creative_manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

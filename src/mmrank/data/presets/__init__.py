"""Sources for `mmrank data import`: a column mapping (YAML) or a preset for a public format.

A **mapping** file says which of your columns is which of mmrank's (every key optional except the
ids and the time)::

    items:                        # leave out when the events name every item (catalog from events)
      columns: {item_id: sku, title: name, image_path: photo, category: cat, price: price,
                created_at: listed}
      created_at_format: unix     # unix | unix_ms | date | iso
    events:
      columns: {ts: time, user_id: uid, item_id: sku, event: action, request_id: rid,
                position: pos, query_text: q, region: country, surface: surface}
      ts_format: unix
      event_values: {view: impression, click: click, add_to_cart: cart, order: purchase,
                     wishlist: null}          # null: not an event (counted, not imported)
      # or, one row per impression with 0/1 label columns instead of `event`:
      # labels: {click: clicked, cart: carted, purchase: bought}

Files are CSV (with a header row, or ``header: [names]``), Parquet or JSON Lines, told apart by their
content (:func:`mmrank.data.readers.read_any`). ``--images DIR`` (default: ``images/`` beside the items
file) finds the photo of an item without ``image``/``image_path`` as ``DIR/<item id>.jpg`` (.jpeg,
.png, .webp), flat or in subfolders, with or without zero padding
(:class:`mmrank.data.image_folder.ImageFolder`); a folder that does not exist, or holds no catalog id,
stops the import. A log with impressions and no ``request_id`` column gets its requests derived by
the importer (``data.session_gap``).

**Presets** (``--preset NAME``), each a module here with a tiny fixture in ``tests/fixtures/``:
``taobao`` (UserBehavior), ``ali-ccp``, ``alimama`` (display ads), ``aliexpress`` (multi-country
search LTR), ``amazon`` (Reviews 2023), ``hm`` (H&M Personalized Fashion); with item vectors (the run's embedding
table, :mod:`mmrank.data.import_vectors`): ``mmrec`` (MMRec's ``*.inter`` with ``image_feat.npy`` /
``text_feat.npy``) and ``mmctr`` (MicroLens MMCTR, ``item_emb.parquet``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from mmrank.data.image_folder import ImageFolder
from mmrank.data.readers import IdMap, col, read_any, to_float, to_int, to_str, to_ts
from mmrank.data.schemas import EVENT_TYPES
from mmrank.data.source import Builder, Source, event_kinds, events_table, wide_to_long
from mmrank.errors import ConfigError, DataError

PRESETS = {
    "taobao": "mmrank.data.presets.taobao",
    "ali-ccp": "mmrank.data.presets.aliccp",
    "alimama": "mmrank.data.presets.alimama",
    "aliexpress": "mmrank.data.presets.aliexpress",
    "amazon": "mmrank.data.presets.amazon",
    "hm": "mmrank.data.presets.hm",
    "mmrec": "mmrank.data.presets.mmrec",
    "mmctr": "mmrank.data.presets.mmctr",
}

ITEM_KEYS = ("item_id", "title", "image", "image_path", "category", "price", "created_at")
EVENT_KEYS = ("ts", "user_id", "item_id", "event", "request_id", "position", "query_text",
              "query_image", "region", "surface", "category")


def load_source(*, preset: str | None = None, mapping: str | Path | dict | None = None,
                items: str | Path | None = None, events: str | Path | None = None,
                images: str | Path | None = None, queries: str | Path | None = None) -> Source:
    """Read the files with ``preset`` or ``mapping`` (a YAML file or a dict); mmrank's own column
    names are the mapping when neither is given."""
    if preset is not None and mapping is not None:
        raise ConfigError("give --preset or --mapping, not both")
    if events is None:
        raise ConfigError("--events is required")
    if images is None and items is not None and (Path(items).parent / "images").is_dir():
        images = Path(items).parent / "images"  # as mmrank.data.io.read_items looks for them
    folder = ImageFolder.open(images)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"--preset: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        mod = importlib.import_module(PRESETS[preset])
        src = mod.load(items=Path(items) if items else None, events=Path(events), images=folder)
    else:
        spec = _mapping_spec(mapping)
        src = from_mapping(spec, items=Path(items) if items else None, events=Path(events),
                           images=folder, name="mapping" if mapping else "mmrank columns")
    if folder is not None:
        folder.check_found()
        src.images_folder = folder.layout
    if queries is not None:
        src.query_images = read_query_images(Path(queries))
    return src


def _mapping_spec(mapping: str | Path | dict | None) -> dict[str, Any]:
    if mapping is None:
        return {}
    if isinstance(mapping, dict):
        spec = mapping
    else:
        try:
            spec = yaml.safe_load(Path(mapping).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{mapping}: no such mapping file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{mapping}: not valid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{mapping}: expected a mapping with 'items' and 'events'")
    for k in spec:
        if k not in ("items", "events"):
            raise ConfigError(f"{mapping}: unknown key '{k}' (expected items, events)")
    for part, keys in (("items", ITEM_KEYS), ("events", EVENT_KEYS)):
        sub = spec.get(part) or {}
        allowed = {"columns", "header", "delimiter", "ts_format", "created_at_format", "event_values",
                   "labels"}
        for k in sub:
            if k not in allowed:
                raise ConfigError(f"{mapping}: {part}: unknown key '{k}' (expected {', '.join(sorted(allowed))})")
        for k in (sub.get("columns") or {}):
            if k not in keys:
                raise ConfigError(f"{mapping}: {part}.columns: unknown mmrank column '{k}' "
                                  f"(expected {', '.join(keys)})")
    return spec


def _read(path: Path, sub: dict[str, Any]) -> pa.Table:
    return read_any(path, names=list(sub["header"]) if sub.get("header") else None,
                    delimiter=sub.get("delimiter", ","))


def _kinds(ev_raw: pa.Table, ecols: dict[str, str], esub: dict[str, Any], ef: str
           ) -> tuple[np.ndarray, list[str], bool, np.ndarray | None, dict[str, int]]:
    """Source rows that are events, their kinds, whether the log has impressions, the request ids
    (None: derived by the importer) and the rows not mapped to events (by value)."""
    n = ev_raw.num_rows
    labels = esub.get("labels")
    if labels:
        lab = {k: to_int(col(ev_raw, c, ef), ef, c) for k, c in labels.items()}
        for k in lab:
            if k not in ("click", "cart", "purchase"):
                raise ConfigError(f"events.labels: unknown label {k!r} (expected click, cart, purchase)")
        rows, kinds = wide_to_long(n, lab)
        req = (to_int(col(ev_raw, ecols["request_id"], ef), ef, ecols["request_id"])
               if ecols["request_id"] in ev_raw.column_names else np.arange(n))
        return rows, kinds, True, req, {}
    values = col(ev_raw, ecols["event"], ef).to_pylist()
    mapping = esub.get("event_values") or {k: k for k in EVENT_TYPES}
    kinds_all, ignored = event_kinds(values, mapping, ef, ecols["event"])
    rows = np.asarray([i for i, k in enumerate(kinds_all) if k is not None], np.int64)
    kinds = [kinds_all[i] for i in rows]
    has_imp = "impression" in kinds
    req = None  # an impression log without request ids: the importer derives them (DataConfig.session_gap)
    if has_imp and ecols["request_id"] in ev_raw.column_names:
        req = to_int(col(ev_raw, ecols["request_id"], ef), ef, ecols["request_id"])
    return rows, kinds, has_imp, req, ignored


def _optional_events(ev_raw: pa.Table, ecols: dict[str, str], ef: str, rows: np.ndarray,
                     req: np.ndarray | None, has_imp: bool) -> dict[str, Any]:
    optional: dict[str, Any] = {}
    if req is not None:
        optional["request_id"] = req[rows]
    if has_imp and ecols["position"] in ev_raw.column_names:
        optional["position"] = to_int(col(ev_raw, ecols["position"], ef), ef, ecols["position"])[rows]
    if ecols["region"] in ev_raw.column_names:
        reg_raw = col(ev_raw, ecols["region"], ef).to_pylist()
        reg = IdMap(reg_raw).map(reg_raw)
        optional["region"] = np.where(reg < 0, 0, reg)[rows]
    for k in ("query_text", "query_image", "surface"):
        if ecols[k] in ev_raw.column_names:
            optional[k] = pa.array(to_str(col(ev_raw, ecols[k], ef)), pa.string()).take(pa.array(rows))
    return optional


def _image_paths(t: pa.Table, column: str, items: Path, images: ImageFolder | None,
                 ids: list[str | None]) -> list[str | None]:
    """Each item's photo file: ``image_path`` (absolute, in the images folder, or beside the items
    file), else the photo named by its id in the images folder."""
    paths: list[str | None] = [None] * t.num_rows
    if column in t.column_names:
        for i, p in enumerate(to_str(t.column(column))):
            if p is not None:
                q = Path(p)
                in_folder = images.root / q if images is not None else None
                cand = q if q.is_absolute() else (in_folder if in_folder and in_folder.exists() else items.parent / q)
                paths[i] = str(cand.resolve())
    return [p if p is not None else (images.find(k) if images is not None else None) for p, k in zip(paths, ids)]


def _mapped_items(t: pa.Table, icols: dict[str, str], isub: dict[str, Any], items: Path,
                  images: ImageFolder | None, item_map: IdMap, raw_ids: list[Any]) -> pa.Table:
    f = str(items)
    out: dict[str, Any] = {"item_id": pa.array(item_map.map(raw_ids))}
    ids = [str(v).strip() if v is not None else None for v in raw_ids]
    for i, v in enumerate(ids):
        if not v:
            raise DataError("empty where a value is required", file=f, row=i, column=icols["item_id"])
    if not item_map.numeric:
        out["source_item_id"] = pa.array(ids, pa.string())
    for k in ("title", "category"):
        if icols[k] in t.column_names:
            out[k] = pa.array(to_str(t.column(icols[k])), pa.string())
    if icols["price"] in t.column_names:
        out["price"] = pa.array(to_float(t.column(icols["price"]), f, icols["price"]))
    if icols["created_at"] in t.column_names:
        out["created_at"] = pa.array(to_ts(t.column(icols["created_at"]), f, icols["created_at"],
                                           isub.get("created_at_format", "unix")))
    if icols["image"] in t.column_names:
        im = t.column(icols["image"])
        if not (pa.types.is_binary(im.type) or pa.types.is_large_binary(im.type)):
            raise DataError(f"expected image bytes (binary), got {im.type}; a column of file names "
                            "is image_path", file=f, row=0, column=icols["image"])
        out["image"] = im.cast(pa.binary())
    out["image_path"] = pa.array(_image_paths(t, icols["image_path"], items, images, ids), pa.string())
    mapped = {icols[k] for k in ITEM_KEYS if icols[k] in t.column_names}
    return pa.table(out | {c: t.column(c) for c in t.column_names if c not in mapped and c not in out})


def from_mapping(spec: dict[str, Any], *, items: Path | None, events: Path, images: ImageFolder | None,
                 name: str) -> Source:
    """A source from a column mapping (mmrank's own names where the mapping says nothing)."""
    b = Builder(name)
    isub, esub = spec.get("items") or {}, spec.get("events") or {}
    icols = {k: k for k in ITEM_KEYS} | dict(isub.get("columns") or {})
    ecols = {k: k for k in EVENT_KEYS} | dict(esub.get("columns") or {})
    ev_raw, ef = _read(events, esub), str(events)
    raw_items = col(ev_raw, ecols["item_id"], ef).to_pylist()
    for i, v in enumerate(raw_items):
        if v is None or not str(v).strip():
            raise DataError("empty where a value is required", file=ef, row=i, column=ecols["item_id"])
    it_raw = _read(items, isub) if items is not None else None
    raw_item_ids = col(it_raw, icols["item_id"], str(items)).to_pylist() if it_raw is not None else raw_items
    item_map = IdMap(raw_item_ids)
    ts = to_ts(col(ev_raw, ecols["ts"], ef), ef, ecols["ts"], esub.get("ts_format", "unix"))
    raw_users = col(ev_raw, ecols["user_id"], ef).to_pylist()
    users = IdMap(raw_users).map(raw_users)
    bad = np.flatnonzero(users < 0)
    if len(bad):
        raise DataError("empty where a value is required", file=ef, row=int(bad[0]), column=ecols["user_id"])
    rows, kinds, has_imp, req, ignored = _kinds(ev_raw, ecols, esub, ef)
    b.add_events(events, events_table(ts=ts[rows], user_id=users[rows], item_id=item_map.map(raw_items)[rows],
                                      event=kinds, **_optional_events(ev_raw, ecols, ef, rows, req, has_imp)), rows)
    if it_raw is not None:
        b.add_items(items, _mapped_items(it_raw, icols, isub, items, images, item_map, raw_item_ids))
    else:
        cat_t = catalog_from_events(b.events[0][1], ev_raw, ecols.get("category"), rows, images,
                                    item_map, raw_items)
        b.add_items(events, cat_t.drop_columns(["_row"]), rows=cat_t.column("_row").to_numpy())
    src = b.build(has_impressions=has_imp, ignored=ignored)
    src.item_columns = {k: icols[k] for k in ITEM_KEYS}
    src.event_columns = {k: ecols[k] for k in EVENT_KEYS}
    if items is None:
        src.notes.append("no items file: the catalog is the items the events name (no titles or images)")
    return src


def catalog_from_events(ev: pa.Table, raw: pa.Table, cat_col: str | None, rows: np.ndarray,
                        images: ImageFolder | None, item_map: IdMap, raw_items: list[Any]) -> pa.Table:
    """Items named by the events (first row of each): id, category (when the log has one), image
    from ``images/<id>.jpg`` when given; ``_row`` = the source row it came from."""
    ids = ev.column("item_id").to_numpy()
    uniq, first = np.unique(ids, return_index=True)
    src_rows = rows[first]
    out: dict[str, Any] = {"item_id": pa.array(uniq)}
    if cat_col and cat_col in raw.column_names:
        cats = to_str(raw.column(cat_col))
        out["category"] = pa.array([cats[r] for r in src_rows], pa.string())
    raw_keys = [str(raw_items[r]).strip() for r in src_rows]
    if not item_map.numeric:
        out["source_item_id"] = pa.array(raw_keys, pa.string())
    out["image_path"] = pa.array([images.find(k) if images is not None else None for k in raw_keys],
                                 pa.string())
    out["_row"] = pa.array(src_rows)
    return pa.table(out)


def read_query_images(path: Path) -> pa.Table:
    """``--queries``: a folder of photos (the id is the file name without suffix) or a Parquet file
    with ``query_image`` and ``image`` columns."""
    from mmrank.data.io import decode_image
    from mmrank.data.schemas import QUERY_IMAGES

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        ids, blobs = [], []
        for p in files:
            b = p.read_bytes()
            try:
                decode_image(b)
            except ValueError as err:
                raise DataError(str(err), file=str(p), column="image") from None
            ids.append(p.stem)
            blobs.append(b)
        return pa.table({"query_image": pa.array(ids, pa.string()), "image": pa.array(blobs, pa.binary())},
                        schema=QUERY_IMAGES)
    t = read_any(path)
    f = str(path)
    qid = to_str(col(t, "query_image", f))
    blobs = col(t, "image", f).to_pylist()
    for i, (q, b) in enumerate(zip(qid, blobs)):
        if q is None:
            raise DataError("empty where a value is required", file=f, row=i, column="query_image")
        try:
            decode_image(b or b"")
        except ValueError as err:
            raise DataError(str(err), file=f, row=i, column="image") from None
    return pa.table({"query_image": pa.array(qid, pa.string()), "image": pa.array(blobs, pa.binary())},
                    schema=QUERY_IMAGES)

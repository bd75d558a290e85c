"""Ali-CCP (Alibaba Click and Conversion Prediction, Ma et al. SIGIR'18), the raw release.

``sample_skeleton_{train,test}.csv`` (no header), one row per impression::

    sample_id,click,conversion,common_feature_index,feature_num,feature_list

and ``common_features_{train,test}.csv`` (no header): ``common_feature_index,feature_num,feature_list``
(the user's features, shared by many samples). A feature list is ``field\\x02id\\x03value`` entries
joined by ``\\x01``. Fields used: 101 user id (common), 205 item id, 206 item category, 216 brand,
207 shop. ``--events`` is the folder holding the files (or one skeleton file; its common features
file sits beside it).

The data has no timestamps: the row order stands in for time (train rows, then test rows), and the
train/test split is the files'. One impression per request (position 0). No titles, photos or
queries (item-to-item pre-training pairs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrank.data.image_folder import ImageFolder
from mmrank.data.readers import IdMap, find_file, read_any, to_int
from mmrank.data.source import Builder, Source, events_table, wide_to_long
from mmrank.errors import DataError

SKELETON = ["sample_id", "click", "conversion", "common_feature_index", "feature_num", "feature_list"]
COMMON = ["common_feature_index", "feature_num", "feature_list"]
USER, ITEM, CATEGORY, SHOP, BRAND = "101", "205", "206", "207", "216"


def parse_features(text: str | None, file: str, row: int) -> dict[str, str]:
    """``"205\\x02123\\x031.0\\x01206\\x027\\x031.0"`` -> ``{"205": "123", "206": "7"}`` (first id per field)."""
    out: dict[str, str] = {}
    if not text:
        return out
    for entry in text.split("\x01"):
        if not entry:
            continue
        field, sep, rest = entry.partition("\x02")
        fid = rest.partition("\x03")[0]
        if not sep or not fid:
            raise DataError(f"bad feature entry {entry!r} (expected field\\x02id\\x03value)", file=file,
                            row=row, column="feature_list")
        out.setdefault(field, fid)
    return out


def _files(events: Path) -> list[tuple[Path, Path | None]]:
    if events.is_dir():
        pairs = []
        for part in ("train", "test"):
            sk = find_file(events, f"sample_skeleton_{part}")
            if sk is not None:
                pairs.append((sk, find_file(events, f"common_features_{part}")))
        if not pairs:
            raise DataError("no sample_skeleton_train.csv or sample_skeleton_test.csv here", file=str(events))
        return pairs
    cf = events.parent / events.name.replace("sample_skeleton", "common_features")
    return [(events, cf if cf.exists() and cf != events else None)]


def _common_users(cf: Path) -> dict[str, str]:
    """common_feature_index -> the user id (field 101) of a common features file."""
    ct = read_any(cf, names=COMMON)
    users: dict[str, str] = {}
    for r, (idx, fl) in enumerate(zip(ct.column("common_feature_index").to_pylist(),
                                      ct.column("feature_list").to_pylist())):
        u = parse_features(fl, str(cf), r).get(USER)
        if u is not None:
            users[idx] = u
    return users


def _skeleton(sk: Path, users: dict[str, str]) -> tuple[int, np.ndarray, np.ndarray, list[dict[str, str]], list[str]]:
    """A sample skeleton file: its rows, click and conversion labels, each row's features and user key."""
    t, f = read_any(sk, names=SKELETON), str(sk)
    click = to_int(t.column("click"), f, "click")
    conv = to_int(t.column("conversion"), f, "conversion")
    feats = [parse_features(x, f, r) for r, x in enumerate(t.column("feature_list").to_pylist())]
    for r, d in enumerate(feats):
        if ITEM not in d:
            raise DataError(f"no item id (field {ITEM}) in the feature list", file=f, row=r,
                            column="feature_list")
    ukey = [users.get(c, f"cfi:{c}") if c is not None else None
            for c in t.column("common_feature_index").to_pylist()]
    for r, u in enumerate(ukey):
        if u is None:
            raise DataError("empty where a value is required", file=f, row=r, column="common_feature_index")
    return t.num_rows, click, conv, feats, ukey


def _add_items(b: Builder, cat_of: dict[int, tuple], images: ImageFolder | None) -> None:
    """The items the samples name, each from the file and row it first appears in."""
    ids = np.asarray(sorted(cat_of), np.int64)
    for path in b.files:
        sel = [int(i) for i in ids if str(cat_of[int(i)][3]) == path]
        if not sel:
            continue
        b.add_items(path, pa.table({
            "item_id": pa.array(sel, pa.int64()),
            "category": pa.array([cat_of[i][0] for i in sel], pa.string()),
            "brand": pa.array([cat_of[i][1] for i in sel], pa.string()),
            "shop": pa.array([cat_of[i][2] for i in sel], pa.string()),
            "image_path": pa.array([images.find(str(i)) if images else None for i in sel], pa.string()),
        }), np.asarray([cat_of[i][4] for i in sel], np.int64))


def load(items: Path | None, events: Path, images: ImageFolder | None) -> Source:
    b = Builder("ali-ccp")
    notes = ["Ali-CCP has no timestamps: row order stands in for time (train file, then test file)"]
    offset, split = 0, None
    user_keys: list[str] = []
    parts = []
    for sk, cf in _files(events):
        if cf is None:
            notes.append(f"{sk.name}: no common features file beside it: each common_feature_index "
                         "stands for a user")
        n, click, conv, feats, ukey = _skeleton(sk, _common_users(cf) if cf is not None else {})
        if "test" in sk.name and split is None and offset:
            split = offset
        parts.append((sk, n, click, conv, feats, ukey, offset))
        user_keys += ukey
        offset += n
    umap = IdMap(user_keys)
    cat_of: dict[int, tuple[str | None, str | None, str | None, Path, int]] = {}
    for sk, n, click, conv, feats, ukey, off in parts:
        item = np.asarray([int(d[ITEM]) for d in feats], np.int64)
        for r, d in enumerate(feats):
            cat_of.setdefault(int(item[r]), (d.get(CATEGORY), d.get(BRAND), d.get(SHOP), sk, r))
        rows, kinds = wide_to_long(n, {"click": click, "purchase": conv})
        ts = off + np.arange(n, dtype=np.int64)
        b.add_events(sk, events_table(ts=ts[rows], user_id=umap.map(ukey)[rows], item_id=item[rows],
                                      event=kinds, request_id=ts[rows], position=np.zeros(len(rows), np.int64)),
                     rows)
    _add_items(b, cat_of, images)
    src = b.build(has_impressions=True, notes=notes, split_ts=split)
    src.item_columns = {"item_id": "feature_list"}
    src.substitutes["time"] = "no timestamps: row order stands in for time"
    return src

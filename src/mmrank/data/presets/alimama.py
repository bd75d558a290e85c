"""Alimama display ads on Taobao (Tianchi data set 56): four CSV files with headers.

* ``raw_sample.csv``: ``user,time_stamp,adgroup_id,pid,nonclk,clk`` (one row per ad shown);
* ``ad_feature.csv``: ``adgroup_id,cate_id,campaign_id,customer,brand,price`` (the catalog);
* ``user_profile.csv``: ``userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,
  shopping_level,occupation,new_user_class_level`` (optional);
* ``behavior_log.csv``: ``user,time_stamp,btag,cate,brand`` (optional).

``--events`` is raw_sample.csv (or the folder); the other files are found beside it (``--items``
overrides ad_feature.csv). An ad is an item (category ``cate_id``); the ads one user was shown at one
``time_stamp`` form one request, in file order; the surface is ``display``. A user's region is
``new_user_class_level`` (city level; 0 when unknown). behavior_log.csv describes behaviour on
categories and brands without item ids, so it is counted but not imported as events. No titles,
photos, purchases or queries (item-to-item pre-training pairs on clicks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrank.data.image_folder import ImageFolder
from mmrank.data.readers import col, find_file, read_any, to_float, to_int, to_str, to_ts
from mmrank.data.source import Builder, Source, events_table, wide_to_long
from mmrank.errors import DataError


def _user_regions(folder: Path, user: np.ndarray) -> tuple[np.ndarray, pa.Table | None, list[str]]:
    """Each event's region (the user's ``new_user_class_level`` in user_profile, else 0) and the users table."""
    up = find_file(folder, "user_profile")
    if up is None:
        return np.zeros(len(user), np.int64), None, ["no user_profile file: every user is in region 0"]
    prof, uf = read_any(up), str(up)
    uid = to_int(col(prof, "userid", uf), uf, "userid")
    level = to_int(col(prof, "new_user_class_level", uf), uf, "new_user_class_level", required=False)
    level = np.where(level < 0, 0, level)
    o = np.argsort(uid)
    pos = np.clip(np.searchsorted(uid[o], user), 0, max(len(uid) - 1, 0))
    hit = (uid[o][pos] == user) if len(uid) else np.zeros(len(user), bool)
    users_tbl = pa.table({"user_id": pa.array(uid)} |
                         {c: pa.array(to_str(prof.column(c)), pa.string()) for c in prof.column_names
                          if c not in ("userid",)})
    return np.where(hit, level[o][pos], 0), users_tbl, []


def _behaviour_rows(folder: Path) -> dict[str, int]:
    """behavior_log's rows, counted (category/brand behaviour without item ids is not imported)."""
    bl = find_file(folder, "behavior_log")
    if bl is None:
        return {}
    if bl.suffix == ".csv":
        with open(bl, "rb") as fh:
            n = max(sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1, 0)
    else:
        n = read_any(bl).num_rows
    return {f"{bl.name} rows (category/brand behaviour without item ids)": n}


def load(items: Path | None, events: Path, images: ImageFolder | None) -> Source:
    folder = events if events.is_dir() else events.parent
    raw_path = events if events.is_file() else (find_file(folder, "raw_sample") or folder / "raw_sample.csv")
    ad_path = items or find_file(folder, "ad_feature") or folder / "ad_feature.csv"
    b = Builder("alimama display ads")
    raw = read_any(raw_path)
    f = str(raw_path)
    n = raw.num_rows
    user = to_int(col(raw, "user", f), f, "user")
    ts = to_ts(col(raw, "time_stamp", f), f, "time_stamp")
    ad = to_int(col(raw, "adgroup_id", f), f, "adgroup_id")
    clk = to_int(col(raw, "clk", f), f, "clk")
    bad = np.flatnonzero((clk != 0) & (clk != 1))
    if len(bad):
        raise DataError(f"expected 0 or 1, got {int(clk[bad[0]])}", file=f, row=int(bad[0]), column="clk")
    req_key = user.astype(np.int64) * (1 << 32) + ts
    _, req = np.unique(req_key, return_inverse=True)
    region, users_tbl, notes = _user_regions(folder, user)
    rows, kinds = wide_to_long(n, {"click": clk})
    b.add_events(raw_path, events_table(ts=ts[rows], user_id=user[rows], item_id=ad[rows], event=kinds,
                                        request_id=req[rows], region=region[rows],
                                        surface=pa.array(["display"] * len(rows), pa.string())), rows)
    feat = read_any(ad_path)
    af = str(ad_path)
    item = to_int(col(feat, "adgroup_id", af), af, "adgroup_id")
    b.add_items(ad_path, pa.table({
        "item_id": pa.array(item),
        "category": pa.array(to_str(col(feat, "cate_id", af)), pa.string()),
        "price": pa.array(to_float(col(feat, "price", af), af, "price")),
        "brand": pa.array(to_str(col(feat, "brand", af)), pa.string()),
        "campaign_id": pa.array(to_str(col(feat, "campaign_id", af)), pa.string()),
        "customer": pa.array(to_str(col(feat, "customer", af)), pa.string()),
        "image_path": pa.array([images.find(str(i)) if images else None for i in item], pa.string()),
    }))
    ignored = _behaviour_rows(folder)
    src = b.build(has_impressions=True, notes=notes, ignored=ignored, users=users_tbl)
    src.item_columns = {"item_id": "adgroup_id", "price": "price"}
    src.event_columns = {"region": "new_user_class_level"}
    return src

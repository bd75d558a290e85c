"""The synthetic market as a ground truth: determinism, manifest, surfaces, regions, leaks, truth apart."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrank.data.market import generate_market, market_config
from mmrank.testing.markets import FASHION, needs_shared_data


def _digests(run: Path) -> dict[str, str]:
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for d in ("data", "truth") for p in sorted((run / d).glob("*")) if p.suffix != ".tmp"}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    cfg = market_config(size="tiny", seed=7, n_items=300, n_users=300, n_impressions=5_000)
    generate_market(cfg, tmp_path / "a")
    generate_market(cfg, tmp_path / "b")
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert {f"data/{n}.parquet" for n in ("items", "events", "pairs", "ctr_samples", "lists",
                                          "query_images", "candidates")} <= set(a)
    assert {"truth/slots.parquet", "truth/candidates.parquet", "truth/requests.parquet"} <= set(a)
    assert a == b
    generate_market(cfg.model_copy(update={"seed": 8}), tmp_path / "c")
    assert _digests(tmp_path / "c")["data/events.parquet"] != a["data/events.parquet"]


def test_truth_is_kept_apart_from_the_data(tiny_market: Path) -> None:
    data = {p.name for p in (tiny_market / "data").iterdir()}
    assert not any("truth" in n for n in data)
    for name in ("items", "events", "ctr_samples", "lists", "pairs"):
        cols = pq.read_schema(tiny_market / "data" / f"{name}.parquet").names
        hidden = {"quality", "popularity", "p_click", "hidden_appeal", "visible_appeal", "engagement",
                  "target_item_id", "content"}
        assert not hidden & set(cols), (name, hidden & set(cols))


def test_manifest_holds_each_surface(tiny_market: Path) -> None:
    man = json.loads((tiny_market / "data" / "manifest.json").read_text())
    assert man["simulated"] is True
    for name in ("items", "events", "pairs", "ctr_samples", "lists"):
        assert man["counts"][name] == pq.ParquetFile(tiny_market / "data" / f"{name}.parquet").metadata.num_rows
    for surface in ("display", "search"):
        s = man["surfaces"][surface]
        assert set(s["rates"]) >= {"click", "cart_per_click", "purchase_per_cart"}
        assert set(s["history_len"]) >= {"median", "p90"}
        assert 0.5 < s["attainable_auc"] <= s["oracle_auc"] < 0.99
        assert 0.0 < s["top1pct_share"] < 1.0
        assert s["columns_r2"] < 0.6  # the columns are a coarse view of the content
        assert s["rates"]["cart_per_click"] <= 0.35 and s["rates"]["purchase_per_cart"] <= 0.55
    assert man["surfaces"]["display"]["rates"]["click"] < man["surfaces"]["search"]["rates"]["click"]
    # The CTR task is the display surface, and its samples start after the burn-in.
    samples = pq.read_table(tiny_market / "data" / "ctr_samples.parquet", columns=["ts", "request_id"])
    assert samples.num_rows == man["surfaces"]["display"]["impressions"]
    assert pc.min(samples.column("ts")).as_py() >= man["start_ts"] > 0
    truth = pq.read_table(tiny_market / "truth" / "slots.parquet")
    p = truth.column("p_click").to_numpy()
    assert np.all((p > 0) & (p < 1))
    assert np.all(truth.column("p_purchase").to_numpy() <= truth.column("p_cart").to_numpy() + 1e-12)


def test_regions_are_uneven_and_differ_in_kind(tiny_market: Path) -> None:
    man = json.loads((tiny_market / "data" / "manifest.json").read_text())
    beh = man["config"]["behaviour"]
    ev = pq.read_table(tiny_market / "data" / "events.parquet", columns=["request_id", "region"])
    req, first = np.unique(ev.column("request_id").to_numpy(), return_index=True)
    share = np.bincount(ev.column("region").to_numpy()[first]) / len(req)
    assert len(share) >= 3 and share.min() <= 0.15 and share.max() > 0.4
    for key in ("region_price_sensitivity", "region_position_decay", "region_photo_weight",
                "region_outside_option", "region_shown"):
        assert len(set(beh[key])) == len(beh[key]) >= 3, key
    # Examination decays with position, more steeply in some regions than in others.
    slots = pq.read_table(tiny_market / "truth" / "slots.parquet").to_pydict()
    requests = pq.read_table(tiny_market / "truth" / "requests.parquet").to_pydict()
    region = np.asarray(requests["region"])[np.asarray(slots["request_id"])]
    pos, clicks = np.asarray(slots["position"]), np.asarray(slots["p_click"])
    top = [clicks[(region == r) & (pos == 0)].mean() / clicks[(region == r) & (pos == 7)].mean()
           for r in range(3)]
    assert min(top) > 1.2 and max(top) > 1.3 * min(top)


def test_new_items_arrive_and_popularity_is_long_tailed(tiny_market: Path) -> None:
    items = pq.read_table(tiny_market / "data" / "items.parquet")
    created = items.column("created_at").to_numpy()
    assert 0.5 < (created == 0).mean() < 0.9 and created.max() > 0
    titles = items.column("title").to_pylist()
    assert len(set(titles)) > 0.5 * len(titles)
    ev = pq.read_table(tiny_market / "data" / "events.parquet", columns=["item_id", "event"])
    imp = ev.filter(pc.equal(ev.column("event"), "impression")).column("item_id").to_numpy()
    counts = np.sort(np.unique(imp, return_counts=True)[1])[::-1]
    assert counts[: max(1, len(counts) // 10)].sum() > 0.3 * counts.sum()


def test_point_in_time_sequences_never_hold_the_present_or_future(tiny_market: Path) -> None:
    ev = pq.read_table(tiny_market / "data" / "events.parquet").to_pylist()
    clicks: dict[int, list[tuple[int, int]]] = {}
    for e in ev:
        if e["event"] == "click":
            clicks.setdefault(e["user_id"], []).append((e["ts"], e["item_id"]))
    for name in ("ctr_samples", "lists"):
        s = pq.read_table(tiny_market / "data" / f"{name}.parquet")
        ts = s.column("ts").to_numpy()
        hist_ts = s.column("hist_ts").combine_chunks()
        lengths = np.diff(hist_ts.offsets.to_numpy())
        flat = hist_ts.flatten().to_numpy()
        owner = np.repeat(np.arange(len(ts)), lengths)
        assert lengths.sum() > 0 and lengths.max() <= 50
        assert np.all(flat < ts[owner]), f"{name}: a behaviour sequence holds an event at or after its sample"
        # Each history is exactly the user's last clicks (any surface) before ts: slow obvious check.
        users = s.column("user_id").to_numpy()
        hist_items = s.column("hist_item_ids").to_pylist()
        hist_times = s.column("hist_ts").to_pylist()
        rng = np.random.default_rng(0)
        for i in rng.choice(len(ts), size=min(300, len(ts)), replace=False):
            before = sorted(c for c in clicks.get(int(users[i]), []) if c[0] < ts[i])[-50:]
            # The same last 50 clicks; which of several clicks sharing the cut-off ts is kept may differ.
            assert sorted(hist_times[i]) == [t for t, _ in before]
            cut = before[0][0] if before else 0
            assert sorted(it for t, it in zip(hist_times[i], hist_items[i]) if t > cut) \
                == sorted(it for t, it in before if t > cut)


def test_pairs_hard_negatives_are_clicked_not_bought(tiny_market: Path) -> None:
    pairs = pq.read_table(tiny_market / "data" / "pairs.parquet").to_pylist()
    ev = pq.read_table(tiny_market / "data" / "events.parquet").to_pylist()
    clicked: dict[int, set[int]] = {}
    bought: dict[int, set[int]] = {}
    surface = {}
    for e in ev:
        surface[e["request_id"]] = e["surface"]
        if e["event"] == "click":
            clicked.setdefault(e["request_id"], set()).add(e["item_id"])
        if e["event"] == "purchase":
            bought.setdefault(e["request_id"], set()).add(e["item_id"])
    assert len(pairs) > 100 and any(p["hard_neg_item_ids"] for p in pairs)
    for p in pairs:
        assert surface[p["request_id"]] == "search"
        assert bought[p["request_id"]] == {p["pos_item_id"]}  # at most one purchase per search list
        assert set(p["hard_neg_item_ids"]) == clicked[p["request_id"]] - bought[p["request_id"]]
        assert (p["query_text"] is None) != (p["query_image"] is None)
        assert p["query_modality"] == ("image" if p["query_image"] else "text")
    assert {p["split"] for p in pairs} == {"train", "test"}


def test_lists_hold_every_candidate_with_point_in_time_sales(tiny_market: Path) -> None:
    lists = pq.read_table(tiny_market / "data" / "lists.parquet").to_pylist()
    ev = pq.read_table(tiny_market / "data" / "events.parquet").to_pylist()
    buys: dict[int, list[int]] = {}
    shown: dict[int, dict[int, int]] = {}
    for e in ev:
        if e["event"] == "purchase":
            buys.setdefault(e["item_id"], []).append(e["ts"])
        if e["event"] == "impression":
            shown.setdefault(e["request_id"], {})[e["item_id"]] = e["position"]
    assert np.mean([len(r["item_ids"]) for r in lists]) > 2 * np.mean([len(shown[r["request_id"]])
                                                                     for r in lists])
    for row in lists[::7]:
        assert row["sales"] == [sum(t < row["ts"] for t in buys.get(i, [])) for i in row["item_ids"]]
        assert row["prod_scores"] == sorted(row["prod_scores"], reverse=True)
        pos = dict(zip(row["item_ids"], row["positions"]))
        assert {i: p for i, p in pos.items() if p >= 0} == shown[row["request_id"]]
        for k, p in enumerate(row["positions"]):
            if p < 0:
                assert row["clicks"][k] == row["carts"][k] == row["purchases"][k] == 0
        assert sum(row["purchases"]) <= 1


def test_no_logged_value_names_the_item_a_query_photo_shows(tiny_market: Path) -> None:
    req = pq.read_table(tiny_market / "truth" / "requests.parquet").to_pydict()
    photo = np.asarray(req["photo_query"])
    target = np.asarray(req["target_item_id"])
    assert photo.sum() > 20
    ids = {int(r): int(target[r]) for r in np.flatnonzero(photo)}
    q_ids = set()
    checked = 0
    for name in ("events", "pairs", "ctr_samples", "lists"):
        table = pq.read_table(tiny_market / "data" / f"{name}.parquet").to_pylist()
        for row in table:
            r = row["request_id"]
            if r not in ids:
                continue
            shot = ids[r]
            checked += 1
            for col, value in row.items():
                values = value if isinstance(value, list) else [value]
                if col in ("item_id", "pos_item_id", "hard_neg_item_ids", "item_ids", "hist_item_ids"):
                    continue  # items shown, bought or clicked: behaviour, not a name for the photo
                for v in values:
                    if isinstance(v, str):
                        assert str(shot) not in v and f"{shot:x}" not in v, (name, col, v)
                    else:
                        assert v != shot, (name, col, v)
            if name == "events":
                q_ids.add((row["query_image"], r))
    assert checked > 0
    # The photo's id names the request, not the item: photos of one item get different ids.
    by_id = {q for q, _ in q_ids}
    assert len(by_id) == len({r for _, r in q_ids})
    assert all(re.fullmatch(r"qi-[0-9a-f]+", q) for q in by_id)


def test_query_photos_look_like_an_item_without_being_its_shop_photo(tiny_market: Path) -> None:
    photos = pq.read_table(tiny_market / "data" / "query_images.parquet").to_pydict()
    req = pq.read_table(tiny_market / "truth" / "requests.parquet").to_pydict()
    items = pq.read_table(tiny_market / "data" / "items.parquet", columns=["item_id", "image"]).to_pydict()
    shop = dict(zip(items["item_id"], items["image"]))
    events = pq.read_table(tiny_market / "data" / "events.parquet", columns=["request_id", "query_image"])
    rid = {q: r for q, r in zip(events.column("query_image").to_pylist(),
                                events.column("request_id").to_pylist()) if q}
    diffs, others = [], []
    rng = np.random.default_rng(0)
    all_ids = list(shop)
    for q, img in list(zip(photos["query_image"], photos["image"]))[:40]:
        a = np.asarray(Image.open(io.BytesIO(img)).convert("RGB"), np.float64)
        t = req["target_item_id"][rid[q]]
        b = np.asarray(Image.open(io.BytesIO(shop[t])).convert("RGB"), np.float64)
        c = np.asarray(Image.open(io.BytesIO(shop[all_ids[rng.integers(len(all_ids))]])).convert("RGB"),
                       np.float64)
        assert not np.array_equal(a, b)
        diffs.append(np.abs(a - b).mean())
        others.append(np.abs(a - c).mean())
    assert np.mean(diffs) < np.mean(others)


def test_text_queries_end_in_what_they_state(tiny_market: Path) -> None:
    """A text query naming a colour ends in an item of that colour far more often than chance."""
    from mmrank.data.render import COLOUR_WORDS

    word_colour = {w: c for c, ws in COLOUR_WORDS.items() for w in ws}
    items = pq.read_table(tiny_market / "data" / "items.parquet", columns=["item_id", "colour"]).to_pydict()
    colour = dict(zip(items["item_id"], items["colour"]))
    pairs = pq.read_table(tiny_market / "data" / "pairs.parquet").to_pylist()
    hits, n, chance = 0, 0, []
    share = {c: v / len(items["colour"]) for c, v in zip(*np.unique(items["colour"], return_counts=True))}
    for p in pairs:
        if not p["query_text"]:
            continue
        text = " " + p["query_text"] + " "
        said = [c for w, c in word_colour.items() if f" {w} " in text]
        if len(set(said)) != 1:
            continue
        n += 1
        hits += colour[p["pos_item_id"]] == said[0]
        chance.append(share[said[0]])
    assert n > 20
    assert hits / n > 3 * np.mean(chance)


@needs_shared_data
def test_real_catalog_mode(tmp_path: Path) -> None:
    cfg = market_config(size="tiny", seed=1, n_items=1_000, n_users=500, n_impressions=8_000,
                        catalog=str(FASHION))
    man = generate_market(cfg, tmp_path)
    assert man["simulated"] is True and "real catalog" in man["source"]
    items = pq.read_table(tmp_path / "data" / "items.parquet")
    real = pq.read_table(FASHION, columns=["item_id", "title"])
    real_titles = dict(zip(real.column("item_id").to_pylist(), real.column("title").to_pylist()))
    for iid, title in zip(items.column("item_id").to_pylist()[:50], items.column("title").to_pylist()[:50]):
        assert real_titles[iid] == title  # titles (and photos) are used as they are
    assert "article_type" in items.column_names and "base_colour" in items.column_names
    assert man["counts"]["pairs"] > 0
    assert man["surfaces"]["display"]["columns_r2"] < 0.6


@needs_shared_data
def test_real_photo_content_is_what_the_photo_shows_beyond_its_type() -> None:
    """On real photos the shape, layout and detail statistics differ a lot between article types
    (the type column would explain them); the content latent keeps the colour as the photo shows it
    and each item's shape against its type's mean, so no type predicts it, while items of one type
    still differ."""
    from mmrank.data.content import COLOUR_STATS, beyond_type, pixel_statistics

    table = pq.read_table(FASHION, columns=["image", "article_type"]).slice(0, 400)
    stats = pixel_statistics(table.column("image").to_pylist(), workers=1)
    codes = np.unique(np.asarray(table.column("article_type").to_pylist()), return_inverse=True)[1]
    latent = beyond_type(stats, codes)

    def type_share(x: np.ndarray) -> float:  # R^2 of the per-type means, averaged over columns
        means = np.stack([np.bincount(codes, weights=x[:, j]) / np.bincount(codes)
                          for j in range(x.shape[1])], axis=1)
        return float(np.mean(1 - ((x - means[codes]) ** 2).sum(0) / ((x - x.mean(0)) ** 2).sum(0)))

    assert type_share(stats[:, COLOUR_STATS:]) > 0.2                 # raw shape: the type tells much
    assert type_share(latent[:, COLOUR_STATS:]) < 1e-9               # beyond the type: nothing
    np.testing.assert_array_equal(latent[:, :COLOUR_STATS], stats[:, :COLOUR_STATS])
    assert latent[:, COLOUR_STATS:].std(axis=0).min() > 0.1 * stats[:, COLOUR_STATS:].std(axis=0).min()


def test_calibration_moves_the_rates_to_their_targets(tmp_path: Path) -> None:
    """Targets far from what the hand-set intercepts give: the market lands near them, and its
    config.yaml (calibrate off, the fitted intercepts) regenerates it byte for byte. (Display
    purchases are too few in a market this small to check their rate.)"""
    import yaml

    from mmrank.data.config import BehaviourConfig

    targets = {"display_click": 0.02, "search_click": 0.25, "cart_per_click": 0.1,
               "display_purchase_per_cart": 0.3, "search_purchase_per_cart": 0.3}
    small = dict(size="tiny", seed=2, n_items=600, n_users=2_000, n_impressions=40_000)
    plain = generate_market(market_config(**small), tmp_path / "plain")
    assert plain["calibration"] is None
    cfg = market_config(**small, calibrate=True,
                        behaviour=BehaviourConfig(target_rates=targets).model_dump())
    man = generate_market(cfg, tmp_path / "cal")
    got = {"display_click": man["surfaces"]["display"]["rates"]["click"],
           "search_click": man["surfaces"]["search"]["rates"]["click"],
           "search_purchase_per_cart": man["surfaces"]["search"]["rates"]["purchase_per_cart"]}
    before = {"display_click": plain["surfaces"]["display"]["rates"]["click"],
              "search_click": plain["surfaces"]["search"]["rates"]["click"],
              "search_purchase_per_cart": plain["surfaces"]["search"]["rates"]["purchase_per_cart"]}
    for k, v in got.items():
        assert abs(v - targets[k]) < 0.25 * targets[k], (k, v, targets[k])
        assert abs(v - targets[k]) < abs(before[k] - targets[k]), (k, v, before[k])
    assert len(man["calibration"]["rounds"]) == 3
    saved = yaml.safe_load((tmp_path / "cal" / "config.yaml").read_text())["market"]
    assert saved["calibrate"] is False
    assert saved["behaviour"]["display_intercept"] == man["calibration"]["intercepts"]["display_intercept"]
    again = generate_market(market_config(**small, **{k: v for k, v in saved.items()
                                                      if k not in small}), tmp_path / "again")
    assert again["calibration"] is None
    a, c = _digests(tmp_path / "again"), _digests(tmp_path / "cal")
    a.pop("data/manifest.json"), c.pop("data/manifest.json")  # one records the calibration rounds
    assert a == c


@pytest.mark.slow
def test_offtheshelf_encoders_see_the_content_latent() -> None:
    """A linear probe on frozen EfficientNet-Lite0 + MiniLM features recovers the small market's content
    latent (what photos show beyond the columns) with R^2 >= 0.5 on held-out items. A market whose
    content no encoder could see would refute the papers by construction."""
    import torch
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import StandardScaler

    from mmrank import encoders
    from mmrank.data.market import synthetic_catalog

    cfg = market_config(size="small", seed=0)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(6)[0])  # the market's own
    cat = synthetic_catalog(cfg.model_copy(update={"n_items": 2_000}), rng)
    img, pre_img = encoders.create_tower("efficientnet-lite0", "image", image_size=cfg.image_size)
    txt, pre_txt = encoders.create_tower("minilm", "text")
    with torch.no_grad():
        fi = torch.cat([img(pre_img(cat.images[a:a + 250])) for a in range(0, 2_000, 250)]).numpy()
        ft = torch.cat([txt(pre_txt(cat.titles[a:a + 250])) for a in range(0, 2_000, 250)]).numpy()
    x = np.concatenate([StandardScaler().fit_transform(fi), StandardScaler().fit_transform(ft)], axis=1)
    y = (cat.continuous - cat.continuous.mean(0)) / cat.continuous.std(0)
    probe = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(x[:1_500], y[:1_500])
    r2 = r2_score(y[1_500:], probe.predict(x[1_500:]))
    assert r2 >= 0.5, f"probe R^2 {r2:.3f}"
    # And the probe is not fooled by noise: shuffled targets give nothing.
    shuffled = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(x[:1_500], y[rng.permutation(1_500)])
    assert r2_score(y[1_500:], shuffled.predict(x[1_500:])) < 0.1

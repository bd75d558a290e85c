"""SCL end to end on a micro market: CLI, artifacts, loader, Acc@N (vs FAISS), compare, Matryoshka."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmrank.errors import MMRankError
from mmrank.pretrain.config import VARIANTS, PretrainConfig
from mmrank.testing.markets import micro_market
from mmrank.testing.pretrain import latent_pairs, tiny_clip

torch.set_num_threads(1)
FAST = dict(image_encoder="cnn-small", text_encoder="hash-bow", epochs=3, batch_size=64,
            queue_size=512, dim=32, nested_dims=[8, 32], hidden=64)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return micro_market(tmp_path_factory.mktemp("pretrain") / "run")


def test_cli_pretrain_writes_encoder_and_loader_matches(market):
    from mmrank.cli import app
    from mmrank.pretrain.item_encoder import load_item_encoder

    res = CliRunner().invoke(app, ["pretrain", "--run", str(market), "--image-encoder", "cnn-small",
                                   "--text-encoder", "hash-bow", "--epochs", "2",
                                   "--batch-size", "64", "--queue-size", "256"])
    assert res.exit_code == 0, res.output
    enc_dir = market / "encoder"
    for f in ("weights.safetensors", "config.json", "config.yaml", "version.txt", "metrics.json"):
        assert (enc_dir / f).exists(), f
    metrics = json.loads((enc_dir / "metrics.json").read_text())
    for n in ("acc@1", "acc@5"):
        assert set(metrics[n]) == {"image", "text"}
        assert all(0.0 <= metrics[n][m] <= 1.0 for m in ("image", "text"))
    # evaluated on exactly the test pairs of each modality
    import pyarrow.parquet as pq

    pairs_t = pq.read_table(market / "data" / "pairs.parquet", columns=["query_modality", "split"]).to_pydict()
    for m in ("image", "text"):
        want = sum(q == m and s == "test" for q, s in zip(pairs_t["query_modality"], pairs_t["split"]))
        assert metrics["n_test"][m] == want > 0
    assert set(metrics["nested"]) == {"64", "128"}

    enc = load_item_encoder(market)
    assert enc.version == (enc_dir / "version.txt").read_text().strip() and len(enc.version) == 16
    assert enc.dim == 256 and "scl" in enc.name

    items = pq.read_table(market / "data" / "items.parquet", columns=["title", "image"]).slice(0, 5)
    titles, images = items.column("title").to_pylist(), items.column("image").to_pylist()
    v = enc.encode_items(titles, images)
    assert v.shape == (5, 256) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one = enc.encode_items(titles[:1], images[:1])  # one at a time = in a batch
    np.testing.assert_allclose(one[0], v[0], atol=1e-5)
    assert enc.encode_text(["red shirt"]).shape == (1, 256)
    assert enc.encode_images(images[:2]).shape == (2, 256)

    # the serving path reproduces the training-time item vectors (cached features -> heads)
    from mmrank.pretrain.item_encoder import load_item_encoder as load_sub
    from mmrank.pretrain.data import build_features, read_catalog, read_pairs

    cat = read_catalog(market)
    feats = build_features(market, cat, read_pairs(market, cat), "cnn-small", "hash-bow", 64, 0)
    with torch.no_grad():
        ref = enc.model.item(feats.item_img[:5], feats.item_txt[:5]).numpy()
    np.testing.assert_allclose(v, ref, atol=2e-3)
    assert load_sub(market).version == enc.version  # deterministic load


def test_missing_encoder_is_a_clear_error(tmp_path):
    from mmrank.pretrain.item_encoder import load_item_encoder

    with pytest.raises(MMRankError, match="encoder/config.json: missing"):
        load_item_encoder(tmp_path)


def test_bad_flag_is_one_line_error(market):
    from mmrank.cli import app

    res = CliRunner().invoke(app, ["pretrain", "--run", str(market), "--variant", "nope"])
    assert res.exit_code != 0 and isinstance(res.exception, MMRankError)


def test_acc_at_n_agrees_with_faiss_exact_search(market):
    import faiss

    from mmrank.pretrain.data import IMAGE, TEXT, build_features, read_catalog, read_pairs
    from mmrank.pretrain.evaluate import evaluate, test_vectors
    from mmrank.pretrain.model import SCLModel

    cat = read_catalog(market)
    pairs = read_pairs(market, cat)
    feats = build_features(market, cat, pairs, "cnn-small", "hash-bow", 64, 0)
    torch.manual_seed(0)
    model = SCLModel(feats.item_img.shape[1], feats.item_txt.shape[1], dim=32, hidden=32).eval()
    metrics = evaluate(model, feats, pairs, [8])
    for name, m in (("image", IMAGE), ("text", TEXT)):
        q, p = test_vectors(model, feats, pairs, m)
        rows = np.flatnonzero(pairs.test & (pairs.modality == m))
        uniq, first = np.unique(pairs.pos[rows], return_index=True)
        index = faiss.IndexFlatIP(p.shape[1])
        index.add(np.ascontiguousarray(p[first]))
        _, top = index.search(np.ascontiguousarray(q), 5)
        target = np.searchsorted(uniq, pairs.pos[rows])
        for n in (1, 5):
            hits = (top[:, :n] == target[:, None]).any(axis=1).mean()
            assert metrics[f"acc@{n}"][name] == pytest.approx(hits, abs=1.0 / len(rows) + 1e-9)


def test_compare_writes_exactly_the_variants(tmp_path):
    from mmrank.pretrain.stage import compare

    run = micro_market(tmp_path / "run", seed=1)
    cfg = PretrainConfig(**{**FAST, "epochs": 2})
    # off-the-shelf is EfficientNet-Lite0 + MiniLM by definition; keep this test to the others
    chosen = ("popularity", "clip-e", "scl", "scl-no-triplet", "scl-no-triplet-no-moco", "scl-no-logq")
    res = compare(run, cfg, variants=chosen)
    table = json.loads((run / "pretrain" / "compare.json").read_text())
    assert list(table) == list(res) == list(chosen)
    for v in table.values():
        assert set(v) == {"acc@1", "acc@5"}
        assert all(isinstance(v[k][m], float) for k in v for m in ("image", "text"))
    md = (run / "pretrain" / "compare.md").read_text()
    assert md.count("\n") == 2 + len(chosen) and "| scl |" in md and "| popularity |" in md
    assert (run / "encoder" / "version.txt").read_text().strip() == res["scl"]["version"]
    assert set(VARIANTS) | {"popularity"} >= set(table)
    # scl and scl-no-logq differ only in the correction, and it changes the trained encoder
    detail = json.loads((run / "pretrain" / "compare_detail.json").read_text())["variants"]
    assert detail["scl"]["version"] != detail["scl-no-logq"]["version"]


def test_compare_over_seeds_reports_mean_and_std_of_each_seed(tmp_path):
    from mmrank.pretrain.stage import compare

    run = micro_market(tmp_path / "run", seed=1)
    cfg = PretrainConfig(**{**FAST, "epochs": 1, "seed": 5})
    res = compare(run, cfg, variants=("popularity", "scl"), seeds=2)
    scl = res["scl"]
    assert scl["seeds"] == 2 and len(scl["per_seed"]) == 2
    assert (run / "pretrain" / "scl.seed6" / "version.txt").exists()
    for acc in ("acc@1", "acc@5"):
        for m in ("image", "text"):
            xs = [r[acc][m] for r in scl["per_seed"]]
            assert scl[acc][m] == pytest.approx(np.mean(xs))
            assert scl["std"][acc][m] == pytest.approx(np.std(xs, ddof=1))
    assert scl["per_seed"][0] != scl["per_seed"][1]  # the seed reaches the training
    assert "std" not in res["popularity"]
    md = (run / "pretrain" / "compare.md").read_text()
    assert md.count("±") == 4 and "| popularity | " in md


def test_compare_rerun_keeps_finished_seeds_and_retrains_a_changed_config(tmp_path, monkeypatch):
    """A killed comparison restarts from its finished seeds: a rerun with the same config and data
    trains nothing and reports the same figures; a changed config trains again."""
    import mmrank.pretrain.stage as stage

    run = micro_market(tmp_path / "run", seed=1)
    cfg = PretrainConfig(**{**FAST, "epochs": 1, "seed": 5})
    first = stage.compare(run, cfg, variants=("scl",), seeds=2)
    made = {d: (run / "pretrain" / d / "weights.safetensors").stat().st_mtime_ns for d in ("scl", "scl.seed6")}

    def refuse(*a, **k):
        raise AssertionError("trained a seed that had finished")

    monkeypatch.setattr(stage, "train", refuse)
    again = stage.compare(run, cfg, variants=("scl",), seeds=2)
    assert again["scl"]["acc@1"] == first["scl"]["acc@1"]
    assert again["scl"]["per_seed"] == first["scl"]["per_seed"]
    assert {d: (run / "pretrain" / d / "weights.safetensors").stat().st_mtime_ns for d in made} == made
    # a seed recorded before a setting existed (here: without click_visual) counts as its default
    rec = run / "pretrain" / "scl" / stage.CONFIG
    old = json.loads(rec.read_text())
    assert old["pretrain_config"].pop("click_visual") is False
    rec.write_text(json.dumps(old))
    assert stage.compare(run, cfg, variants=("scl",), seeds=2)["scl"]["per_seed"] == first["scl"]["per_seed"]
    with pytest.raises(AssertionError, match="trained a seed"):
        stage.compare(run, cfg.model_copy(update={"lr": cfg.lr * 2}), variants=("scl",), seeds=2)


def test_matryoshka_prefix_still_retrieves():
    """Trained with nested dims, a 4-d prefix of a 64-d vector still retrieves (Acc@5 near the
    whole vector's), much better than the 4-d prefix of the same model trained without nesting."""
    from mmrank.pretrain.evaluate import evaluate
    from mmrank.pretrain.train import train

    feats, pairs, ids = latent_pairs()
    base = dict(variant="scl-no-triplet-no-moco", epochs=8, batch_size=100, dim=64, hidden=64,
                lr=3e-3, warmup_steps=5)
    nested = train(PretrainConfig(**base, nested_dims=[4, 64]), feats, pairs, ids, log=lambda m: None)
    flat = train(PretrainConfig(**base, nested_dims=[64]), feats, pairs, ids, log=lambda m: None)
    mn = evaluate(nested, feats, pairs, [4])
    mf = evaluate(flat, feats, pairs, [4])
    for mod in ("image", "text"):
        assert mn["acc@1"][mod] > 0.9                                   # the task is learnable
        assert mn["nested"]["4"]["acc@5"][mod] >= 0.8 * mn["acc@5"][mod]
        assert mn["nested"]["4"]["acc@1"][mod] > mf["nested"]["4"]["acc@1"][mod] + 0.15


def test_pretrain_with_hf_clip_towers(market, tmp_path):
    """`hf-clip:<dir>` as both towers (a tiny random CLIP): trains, saves, loads, encodes."""
    from mmrank.pretrain.item_encoder import load_item_encoder
    from mmrank.pretrain.stage import pretrain

    d = tiny_clip(tmp_path / "clip")
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    for f in ("items.parquet", "pairs.parquet", "query_images.parquet"):
        (run / "data" / f).write_bytes((market / "data" / f).read_bytes())
    cfg = PretrainConfig(**{**FAST, "image_encoder": f"hf-clip:{d}", "text_encoder": f"hf-clip:{d}",
                            "epochs": 1})
    m = pretrain(run, cfg)
    assert m["image_size"] == 32
    enc = load_item_encoder(run)
    assert enc.encode_text(["red shirt"]).shape == (1, 32)
    assert enc.encode_images([_jpeg()]).shape == (1, 32)


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 99, 199)).save(buf, "JPEG")
    return buf.getvalue()

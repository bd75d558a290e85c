"""`mmrank export --format onnx`: the towers and CTR models run in ONNX Runtime and give PyTorch's
outputs (tolerance :data:`mmrank.export.stage.TOLERANCE`) on batches of other sizes than the export's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from mmrank.export.stage import TOLERANCE, export_run  # noqa: E402
from mmrank.testing.presets import run_mmrank  # noqa: E402


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, feeds: dict[str, np.ndarray]) -> np.ndarray:
    used = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in used})[0]


def test_onnx_graphs_give_pytorchs_outputs(serving_run_copy):
    """Every CTR strategy of the run (id, simtier, simtier+make, plus vector trained here) scores a batch
    of 5 samples, some without history, as :func:`mmrank.ctr.scoring.score` does, the representation
    table passed in; the item and query towers give the encoder's vectors for the catalog's cached
    backbone features."""
    from mmrank.ctr.artifacts import load_model
    from mmrank.ctr.data import load_samples, make_batch
    from mmrank.ctr.representations import item_vectors, vector_table
    from mmrank.ctr.scoring import score
    from mmrank.ctr.stage import train_strategy
    from mmrank.pretrain.item_encoder import load_item_encoder

    run = serving_run_copy
    train_strategy(run, "vector", progress=False)
    manifest = export_run(run)
    out = run / "export" / "onnx"
    assert json.loads((out / "manifest.json").read_text()) == manifest
    strategies = ["id", "simtier", "simtier+make", "vector"]
    assert {f"ctr-{s}.onnx" for s in strategies} <= set(manifest["files"])

    samples = load_samples(run / "data" / "ctr_samples.parquet")
    for s in strategies:
        model, space, _ = load_model(run, s)
        enc = space.encode(samples)
        lens = np.diff(enc.raw.hist_offsets)
        rows = np.concatenate([np.flatnonzero(lens == 0)[:2], np.flatnonzero(lens > 3)[:3]])
        assert len(rows) == 5
        batch = make_batch(enc, rows, model.cfg.history_len)
        feeds = {k: v.numpy() for k, v in batch.items()}
        table = None
        if model.cfg.uses_vectors:
            ids, vecs, _ = item_vectors(run)
            table = vector_table(space, ids, vecs)
            feeds["vectors"] = table.numpy()
        want = score(model, batch, table).numpy()
        got = _run(_session(out / f"ctr-{s}.onnx"), feeds)
        assert got.shape == (5,)
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
        assert np.std(want) > 1e-4          # the batch's scores differ: a constant graph would fail

    enc = load_item_encoder(run)
    _, img_h, txt_h = enc.cached_item_features(run)
    n = 9
    want = enc.encode_item_features(img_h[:n], txt_h[:n])
    got = _run(_session(out / "item_tower.onnx"), {"image_features": img_h[:n], "title_features": txt_h[:n]})
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    with torch.inference_mode():
        want_q = enc.model.text_query(torch.from_numpy(txt_h[:n])).numpy()
    np.testing.assert_allclose(_run(_session(out / "text_query.onnx"), {"text_features": txt_h[:n]}),
                               want_q, atol=TOLERANCE, rtol=0)


def test_export_refuses_what_it_cannot_do(serving_run_copy):
    """An unknown format and an untrained strategy are one line each, exit 2, naming what exists."""
    r = run_mmrank("export", "--run", str(serving_run_copy), "--format", "torchscript")
    assert r.returncode == 2 and "only 'onnx'" in r.stderr
    r = run_mmrank("export", "--run", str(serving_run_copy), "--strategies", "make")
    assert r.returncode == 2
    assert "no trained model for make" in r.stderr and "simtier+make" in r.stderr
    assert not (serving_run_copy / "export").exists()

"""`mmrank embed --device`: the item encoder and its feature cache on one device.

On this (CPU) machine: ``--device cuda`` is one line and exit 2 before anything is written; ``--device
cpu`` gives the very vectors the default gives and records where it ran; the encoder loaded with
``device="cpu"`` and the feature cache's ``encode(device=cpu)`` give the numbers they give without
it. On a CUDA machine (tests marked ``gpu``): the catalog embedded on the GPU agrees with the CPU's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

torch.set_num_threads(1)
NO_CUDA = not torch.cuda.is_available()


def _table(run: Path) -> tuple[np.ndarray, np.ndarray]:
    from mmrank.store.backends import open_table

    with open_table(run / "embeddings") as t:
        ids = np.sort(t.ids())
        return ids, t.get(ids)


def _embed(run: Path, *flags: str) -> dict:
    """``mmrank embed --run RUN --json FLAGS`` on a fresh embeddings/ (every item encoded again)."""
    from mmrank.cli import app

    shutil.rmtree(run / "embeddings", ignore_errors=True)
    r = CliRunner().invoke(app, ["embed", "--run", str(run), "--json", *flags], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_embed_device_cuda_without_cuda_is_one_line_exit_2(serving_run_copy: Path) -> None:
    before = sorted(p.name for p in (serving_run_copy / "embeddings").iterdir())
    src = str(Path(__file__).resolve().parents[1] / "src")
    res = subprocess.run([sys.executable, "-m", "mmrank.cli", "embed", "--run", str(serving_run_copy),
                          "--device", "cuda"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: device cuda: this machine has no CUDA device"), lines[0]
    assert sorted(p.name for p in (serving_run_copy / "embeddings").iterdir()) == before


@pytest.mark.parametrize("reuse", ["--no-reuse-features", "--reuse-features"])
def test_embed_device_cpu_gives_the_default_vectors(serving_run_copy: Path, reuse: str) -> None:
    run = serving_run_copy
    default = _embed(run, reuse)
    ids_a, vec_a = _table(run)
    cpu = _embed(run, reuse, "--device", "cpu")
    ids_b, vec_b = _table(run)
    assert default["encoded"] == cpu["encoded"] == len(ids_a) > 0
    assert (default["from_cache"] > 0) == (reuse == "--reuse-features")
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(vec_a, vec_b)  # the same numbers, not merely close
    assert cpu["device"].startswith("cpu (") and default["device"].startswith("cpu (")
    assert cpu["items_per_second"] > 0


def test_item_encoder_on_cpu_gives_the_default_numbers(serving_run: Path) -> None:
    from mmrank.data.io import read_items
    from mmrank.pretrain.item_encoder import load_item_encoder

    t = read_items(serving_run / "data" / "items.parquet", ["item_id", "title"]).slice(0, 12)
    titles, images = t.column("title").to_pylist(), t.column("image").to_pylist()
    a = load_item_encoder(serving_run)
    b = load_item_encoder(serving_run, device="cpu", bf16=True)  # bf16 never autocasts on the CPU
    assert b.device == torch.device("cpu") and next(b.model.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(a.encode_items(titles, images), b.encode_items(titles, images))
    np.testing.assert_array_equal(a.encode_text(titles), b.encode_text(titles))
    np.testing.assert_array_equal(a.encode_images(images), b.encode_images(images))
    h_img = np.random.default_rng(0).standard_normal((5, a.config["d_image"])).astype(np.float32)
    h_txt = np.random.default_rng(1).standard_normal((5, a.config["d_text"])).astype(np.float32)
    np.testing.assert_array_equal(a.encode_item_features(h_img, h_txt), b.encode_item_features(h_img, h_txt))


def test_feature_cache_on_cpu_writes_the_same_table(tmp_path: Path) -> None:
    from mmrank.encoders import create
    from mmrank.encoders.cache import cache_key, cached_features, encode

    enc, pre = create("cnn-small", image_size=32, trainable_blocks=0)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(10)]
    from PIL import Image

    pil = [Image.fromarray(a) for a in imgs]
    a = encode(enc, pre, len(pil), lambda s, e: pil[s:e], batch_size=4)
    b = encode(enc, pre, len(pil), lambda s, e: pil[s:e], batch_size=4, device=torch.device("cpu"))
    np.testing.assert_array_equal(a, b)
    key = cache_key(enc.name, "image", 32, 0)
    keys = [f"img{i}" for i in range(len(pil))]
    got = cached_features(lambda: (enc, pre), key, keys, lambda s, e: pil[s:e], tmp_path, "t",
                          device=torch.device("cpu"))
    np.testing.assert_array_equal(got, a.astype(np.float16).astype(np.float32) if a.ndim > 2 else a)
    assert (tmp_path / key / "t.npy").exists()


def test_embed_catalog_cuda_without_cuda_fails_before_writing(serving_run_copy: Path) -> None:
    from mmrank.device import DeviceError, HardwareConfig
    from mmrank.store.stage import embed_catalog

    if not NO_CUDA:
        pytest.skip("this machine has CUDA")
    shutil.rmtree(serving_run_copy / "embeddings")
    with pytest.raises(DeviceError, match="no CUDA device"):
        embed_catalog(serving_run_copy, hardware=HardwareConfig(device="cuda"), progress=False)
    assert not (serving_run_copy / "embeddings").exists()


@pytest.mark.gpu
def test_embed_on_cuda_agrees_with_cpu(serving_run_copy: Path) -> None:
    run = serving_run_copy
    _embed(run, "--no-reuse-features", "--device", "cpu")
    ids_a, vec_a = _table(run)
    gpu = _embed(run, "--no-reuse-features", "--device", "cuda")
    ids_b, vec_b = _table(run)
    assert gpu["device"].startswith("cuda:")
    np.testing.assert_array_equal(ids_a, ids_b)
    cos = np.sum(vec_a * vec_b, axis=1)  # unit vectors: bf16 autocast keeps them within ~1e-2
    assert cos.min() > 0.99, cos.min()
    fp32 = _embed(run, "--no-reuse-features", "--device", "cuda", "--config", str(_no_bf16(run)))
    assert fp32["device"].startswith("cuda:")
    # fp32 on CUDA: cuDNN may run the convolutions in TF32 (torch's default), ~1e-3 relative
    np.testing.assert_allclose(_table(run)[1], vec_a, atol=5e-3)


def _no_bf16(run: Path) -> Path:
    p = run / "no_bf16.yaml"
    p.write_text("hardware:\n  bf16: false\n")
    return p


def test_search_device_cpu_gives_the_default_results(serving_run: Path) -> None:
    from mmrank.cli import app
    from mmrank.device import DeviceError

    args = ["search", "--run", str(serving_run), "--text", "red cotton shirt", "--k", "5", "--json"]
    a = CliRunner().invoke(app, args, catch_exceptions=False)
    b = CliRunner().invoke(app, [*args, "--device", "cpu"], catch_exceptions=False)
    assert a.exit_code == b.exit_code == 0, (a.output, b.output)
    ra, rb = json.loads(a.output)["results"], json.loads(b.output)["results"]
    assert len(ra) == 5 and ra == rb  # same items, same scores
    if NO_CUDA:
        r = CliRunner().invoke(app, [*args, "--device", "cuda"])
        assert isinstance(r.exception, DeviceError) and "no CUDA device" in str(r.exception)

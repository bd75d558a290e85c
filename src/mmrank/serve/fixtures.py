"""A small complete run for the server's tests and benchmark (seconds to build, no downloads).

A synthetic market, an encoder with small from-scratch towers (``cnn-small`` image, ``hash-bow``
text) trained for one epoch, the embedding table with its index, and CTR models. Every stage is the
real one; only the sizes are small. Not used by any stage.
"""

from __future__ import annotations

from pathlib import Path

SMALL_ENCODER = dict(variant="scl-no-triplet-no-moco", image_encoder="cnn-small", text_encoder="hash-bow",
                     image_size=32, dim=32, nested_dims=[32], hidden=32, epochs=1, batch_size=64)


def build_serving_run(run: str | Path, *, n_items: int = 300, n_users: int = 300,
                      n_impressions: int = 8000, strategies: tuple[str, ...] = ("id", "simtier"),
                      seed: int = 0) -> Path:
    """Write a run with data/, encoder/, embeddings/ and ctr/<strategy>/ for each of ``strategies``."""
    from mmrank.ctr.run import train_strategy
    from mmrank.data.market import generate_market, market_config
    from mmrank.store import embed_catalog
    from mmrank.threads import limited

    run = Path(run)
    with limited(1):
        generate_market(market_config(size="tiny", seed=seed, n_items=n_items, n_users=n_users,
                                      n_impressions=n_impressions), run)
        new_encoder(run, seed=seed)
        for s in strategies:
            train_strategy(run, s, make_epochs=1, progress=False)
    return run


def new_encoder(run: str | Path, seed: int = 0) -> str:
    """Train the small encoder into ``R/encoder`` and embed the catalog with it (made CURRENT);
    returns the encoder version. Another ``seed`` gives another version."""
    from mmrank.pretrain import pretrain
    from mmrank.pretrain.config import PretrainConfig
    from mmrank.store import embed_catalog

    res = pretrain(run, PretrainConfig(**SMALL_ENCODER, seed=seed))
    embed_catalog(run, progress=False)
    return (Path(run) / "encoder" / "version.txt").read_text().strip()

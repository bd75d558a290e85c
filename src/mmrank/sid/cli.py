"""`mmrank sid build`: semantic IDs (residual k-means codes) of a run's embedding table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmrank.device import DEVICE_HELP

app = typer.Typer(no_args_is_help=True, help="Semantic IDs: residual k-means codes of the item "
                                             "representations (issue 25).")


@app.command("build")
def build_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (reads RUN/embeddings; never behaviour)"),
    levels: Optional[int] = typer.Option(None, help="L: tokens per item (default 3)"),
    codes: Optional[int] = typer.Option(None, help="C: codewords per level (default 64)"),
    niter: Optional[int] = typer.Option(None, help="k-means iterations per level (default 20)"),
    seed: Optional[int] = typer.Option(None, help="k-means seed (default 0)"),
    version: Optional[str] = typer.Option(None, help="encoder version of the table (default: CURRENT)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP + "; the codes are FAISS "
                                         "k-means on the host (no torch model): the device is only checked"),
) -> None:
    """Residual k-means over RUN's embedding table; writes RUN/embeddings/v-<version>/sid/ and prints
    codebook usage and reconstruction error per level."""
    from rich.console import Console

    from mmrank.run_config import hardware_config
    from mmrank.sid.config import SidConfig
    from mmrank.sid.stage import build_sid, sid_dir, stats_table

    hardware_config(None, device=device)  # one line, exit 2, for a device this machine lacks

    flags = {k: v for k, v in dict(levels=levels, codes=codes, niter=niter, seed=seed).items() if v is not None}
    cfg = SidConfig(**flags)
    meta = build_sid(run, cfg, version=version)
    con = Console()
    con.print(stats_table(meta))
    c = meta["collisions"]
    con.print(f"{c['distinct_codes']} distinct codes; {c['items_sharing_a_code']} items share theirs "
              f"(last token up to {c['max_token']}); {meta['seconds']} s -> "
              f"{sid_dir(run, meta['encoder_version'])}")

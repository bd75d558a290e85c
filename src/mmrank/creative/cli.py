"""`mmrank creative generate --run R` and `mmrank creative compare --run R --seeds N`: thin shells over
:mod:`mmrank.creative.stage`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mmrank.device import DEVICE_HELP

app = typer.Typer(no_args_is_help=True, help="Creatives: K renders per item with hidden appeal (simulated), "
                                             "a logged exploration policy, and an explained selector.")

_RUN = typer.Option(..., "--run", help="a market run (`mmrank market generate`)")


def _device(device: Optional[str]):
    """The run config's hardware section with ``--device``, resolved at once (one line, exit 2, for a
    device this machine lacks)."""
    from mmrank.run_config import hardware_config

    return hardware_config(None, device=device)


def _config(**flags: Any):
    from mmrank.config import build
    from mmrank.creative.config import CreativeConfig

    return build(CreativeConfig, {k: v for k, v in flags.items() if v is not None}, "creative flags")


@app.command("generate")
def generate(run: Path = _RUN,
             per_item: Optional[int] = typer.Option(None, "--per-item", help="creatives per item, 2-4 "
                                                    "(default 3)"),
             exploration: Optional[float] = typer.Option(None, "--exploration", help="share of impressions "
                                                         "showing a non-default creative (default 0.1, an "
                                                         "assumption about what shops do)"),
             seed: Optional[int] = typer.Option(None, "--seed", help="seed (default 0)"),
             max_impressions: Optional[int] = typer.Option(None, "--max-impressions",
                                                           help="impressions in the log (default 200000)"),
             device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP + "; generating "
                                                  "runs no torch model (rendering and sampling on the "
                                                  "host): the device is only checked"),
             ) -> None:
    """Render K creatives per item, draw their hidden appeal (R/truth/) and a creative log (R/data/)."""
    from mmrank.creative.stage import generate as run_generate

    _device(device)

    out = run_generate(_config(per_item=per_item, exploration=exploration, seed=seed,
                               max_impressions=max_impressions), run)
    typer.echo(f"wrote {out['creatives']} creatives ({out['per_item']} per item) and a creative log of "
               f"{out['impressions']} impressions (exploration {out['exploration']:g}, assumed; simulated "
               f"clicks, CTR {out['log_ctr']:.4f}) under {run}/data")


@app.command("compare")
def compare(run: Path = _RUN,
            seeds: int = typer.Option(3, "--seeds", min=1, help="selector training seeds"),
            epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="selector epochs (default 8)"),
            device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP + "; where the "
                                                 "selectors are fitted"),
            ) -> None:
    """Expected CTR (and purchases) of default, logged, random, selector and oracle creatives over the
    log's test impressions (evaluated against the hidden truth); writes R/creative/compare.{json,md}."""
    from mmrank.creative.stage import compare as run_compare, render_md

    hw = _device(device)
    out = run_compare(_config(epochs=epochs), run, seeds, hardware=hw)
    typer.echo(render_md(out), nl=False)
    typer.echo(f"wrote {run}/creative/compare.json, compare.md and selector.json")

"""The `mmrank` command line: one command per stage, each a thin shell over one Python function.

Errors a user can act on (bad data, bad config) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import typer

from mmrank.errors import MMRankError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mmrank: multimodal item representations for e-commerce ranking.")
market_app = typer.Typer(no_args_is_help=True, help="The synthetic market (the embedded default data).")
data_app = typer.Typer(no_args_is_help=True, help="Bring your own data: validate tables, build derived ones.")
app.add_typer(market_app, name="market")
app.add_typer(data_app, name="data")


@market_app.command("generate")
def market_generate(
    out: Path = typer.Option(..., "--out", help="run directory; tables go to OUT/data/"),
    catalog: Optional[Path] = typer.Option(None, help="a real catalog (Parquet); behaviour is simulated"),
    size: str = typer.Option("default", help="tiny | small | default (sets items/users/impressions)"),
    items: Optional[int] = typer.Option(None, help="number of items (synthetic) or catalog subset"),
    users: Optional[int] = typer.Option(None),
    impressions: Optional[int] = typer.Option(None),
    regions: Optional[int] = typer.Option(None),
    days: Optional[int] = typer.Option(None),
    seed: int = typer.Option(0),
    config: Optional[Path] = typer.Option(None, help="a YAML MarketConfig; flags override it"),
) -> None:
    """Generate items, users, events and ground truth (and the derived tables) under OUT/data/."""
    from mmrank.data.market import generate_market, market_config

    cfg = market_config(size=size, config=config, n_items=items, n_users=users,
                        n_impressions=impressions, n_regions=regions, n_days=days, seed=seed,
                        catalog=str(catalog) if catalog else None)
    manifest = generate_market(cfg, out)
    typer.echo(f"wrote {out}/data: {manifest['counts']} oracle_auc={manifest['oracle_auc']:.4f}")


@data_app.command("validate")
def market_validate(path: Path = typer.Argument(..., help="an items or events Parquet file"),
                    kind: str = typer.Option("items", help="items | events"),
                    items: Optional[Path] = typer.Option(None, help="items file (for events)")) -> None:
    """Validate a table; bad input prints one line naming file, row and column."""
    from mmrank.data.io import validate_events, validate_items

    if kind == "items":
        ids = validate_items(path)
        typer.echo(f"{path}: {len(ids)} items OK")
    elif kind == "events":
        if items is None:
            raise MMRankError("--items is required to validate events")
        n = validate_events(path, validate_items(items, check_images=False))
        typer.echo(f"{path}: {n} events OK")
    else:
        raise MMRankError(f"--kind: expected items or events, got {kind!r}")


@data_app.command("build")
def data_build(run: Path = typer.Option(..., "--run", help="run directory with data/items.parquet and data/events.parquet"),
               split_ts: int = typer.Option(..., help="train/test boundary (seconds): earlier is train"),
               history_len: int = typer.Option(50, help="at most L clicks per behaviour sequence"),
               start_ts: int = typer.Option(0, help="earlier events feed histories and sales only")) -> None:
    """Validate a team's items and events, then build pairs, CTR samples and lists beside them."""
    from mmrank.data.samples import build_derived

    counts = build_derived(run, split_ts, history_len, start_ts)
    typer.echo(f"wrote {run}/data: {counts}")


@app.command("demo")
def demo(out: Path = typer.Option(Path("runs/demo"), "--out"),
         size: str = typer.Option("small", help="tiny | small | default")) -> None:
    """Run every stage on the embedded default; writes OUT/report/results.json and results.md."""
    from mmrank.demo import run_demo

    run_demo(out, size)


# Stage sub-commands live beside their stage and are registered here when present.
_STAGE_APPS = {
    "pretrain": "mmrank.pretrain.cli",
    "ctr": "mmrank.ctr.cli",
}
_STAGE_COMMANDS = {
    "embed": ("mmrank.store.cli", "embed"),
    "search": ("mmrank.store.cli", "search"),
    "serve": ("mmrank.serve.cli", "serve"),
}
for _name, _mod in _STAGE_APPS.items():
    try:
        app.add_typer(importlib.import_module(_mod).app, name=_name)
    except ModuleNotFoundError as _err:
        if not (_err.name or "").startswith("mmrank"):
            raise
for _name, (_mod, _fn) in _STAGE_COMMANDS.items():
    try:
        app.command(_name)(getattr(importlib.import_module(_mod), _fn))
    except ModuleNotFoundError as _err:
        if not (_err.name or "").startswith("mmrank"):
            raise


def main() -> None:
    try:
        app(standalone_mode=True)
    except MMRankError as err:
        # One plain line (no rich wrapping), whatever the terminal width.
        sys.stderr.write(f"error: {' '.join(str(err).split())}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()

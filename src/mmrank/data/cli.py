"""`mmrank data ...`: bring your own data (import, validate, build, profile); thin shells over
:mod:`mmrank.data.importer`, :mod:`mmrank.data.io`, :mod:`mmrank.data.samples`, :mod:`mmrank.data.profile`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmrank.errors import MMRankError

app = typer.Typer(no_args_is_help=True, help="Bring your own data: import, validate, build, profile.")

_CONFIG = typer.Option(None, "--config", help="a run config YAML (see `mmrank config init`); flags override it")


@app.command("validate")
def validate(path: Path = typer.Argument(..., help="an items or events Parquet file"),
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


@app.command("build")
def build(run: Path = typer.Option(..., "--run", help="run directory with data/items.parquet and data/events.parquet"),
          split_ts: Optional[int] = typer.Option(None, help="train/test boundary (seconds): earlier is train"),
          history_len: Optional[int] = typer.Option(None, help="at most L clicks per behaviour sequence (default 50)"),
          start_ts: Optional[int] = typer.Option(None, help="earlier events feed histories and sales only "
                                                 "(default 0)"),
          config: Optional[Path] = _CONFIG) -> None:
    """Validate a team's items and events, then build pairs, CTR samples and lists beside them."""
    from mmrank.config import record
    from mmrank.run_config import stage_config
    from mmrank.data.samples import build_derived

    cfg = stage_config("data", config, {"split_ts": split_ts, "history_len": history_len, "start_ts": start_ts})
    if cfg.split_ts is None:
        raise MMRankError("data build: give --split-ts (or data.split_ts in --config)")
    counts = build_derived(run, cfg.split_ts, cfg.history_len, cfg.start_ts)
    from mmrank.lineage import stamp_data

    stamp_data(run / "data")
    record(run, "data", cfg)
    typer.echo(f"wrote {run}/data: {counts}")


@app.command("import")
def import_(
    run: Path = typer.Option(..., "--run", help="run directory to create: RUN/data/"),
    items: Optional[Path] = typer.Option(None, "--items", help="catalog: Parquet, CSV or JSON Lines"),
    events: Path = typer.Option(..., "--events", help="behaviour log (a file, or the preset's folder)"),
    images: Optional[Path] = typer.Option(None, "--images", help="folder of photos named by item id, flat "
                                          "or in subfolders, with or without zero padding"),
    queries: Optional[Path] = typer.Option(None, "--queries", help="query photos: a folder, or Parquet "
                                           "(query_image, image)"),
    mapping: Optional[Path] = typer.Option(None, "--mapping", help="YAML column mapping (see the README)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="taobao | ali-ccp | alimama | aliexpress | "
                                         "amazon | hm | mmrec | mmctr"),
    split_ts: Optional[int] = typer.Option(None, "--split-ts", help="train/test boundary (seconds)"),
    negatives: Optional[int] = typer.Option(None, "--negatives", help="sampled negatives per interaction "
                                            "(logs without impressions; default 4)"),
    strict: bool = typer.Option(False, "--strict", help="an event naming an unknown item stops the import"),
    replace: bool = typer.Option(False, "--replace", help="replace RUN/data if it exists"),
    item_vectors: Optional[Path] = typer.Option(None, "--item-vectors", help="item embeddings: Parquet (an id "
                                                "column and a list<float> column) or a .npy matrix; they "
                                                "become RUN/embeddings (no pre-training needed)"),
    vector_ids: Optional[Path] = typer.Option(None, "--vector-ids", help="the ids of a .npy matrix's rows "
                                              "(.txt, one a line, or .parquet); default: the catalog's order"),
    vector_id_column: str = typer.Option("item_id", "--vector-id-column", help="id column of the vectors file"),
    vector_column: str = typer.Option("embedding", "--vector-column", help="list<float> column of the "
                                      "vectors file"),
    config: Optional[Path] = _CONFIG,
) -> None:
    """Import a catalog and logs (checked row by row) into RUN/data/, then build the derived tables.

    Writes to a temporary directory and moves it into place at the end: a failed import leaves RUN as
    it was."""
    from mmrank.run_config import stage_config
    from mmrank.data.import_summary import format_summary
    from mmrank.data.importer import import_data
    from mmrank.data.profile import format_profile

    cfg = stage_config("data", config, {"split_ts": split_ts, "negatives_per_positive": negatives})
    summary = import_data(run, items=items, events=events, images=images, queries=queries,
                          mapping=mapping, preset=preset, cfg=cfg, replace=replace, strict=strict,
                          progress=True, item_vectors=item_vectors, vector_ids=vector_ids,
                          vector_id_column=vector_id_column, vector_column=vector_column)
    typer.echo(format_summary(summary))
    typer.echo(format_profile(summary["profile"], short=True))
    typer.echo(f"wrote {run}/data (the full profile: mmrank data profile --run {run})")
    from mmrank.lineage import stale_artifacts

    stale = stale_artifacts(run)
    if stale:
        typer.echo("made from the data replaced, refused until rebuilt: "
                   + "; ".join(f"{d} (`{cmd}`)" for d, cmd in stale))


@app.command("profile")
def profile(run: Path = typer.Option(..., "--run", help="run directory with data/")) -> None:
    """What RUN's data holds, and where a figure is too small to measure (also RUN/data/profile.json).

    Items with photo/title/price, photo sizes, events per user and per item, purchases per user,
    pre-training pairs and their split, repeated events merged and why; Acc@N with its 95% interval."""
    from mmrank.data.profile import format_profile, write_profile

    if not (run / "data" / "items.parquet").exists():
        raise MMRankError(f"{run}/data/items.parquet: no such file (import data into {run} first)")
    typer.echo(format_profile(write_profile(run)))

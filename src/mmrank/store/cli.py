"""`mmrank embed` and `mmrank search`: thin shells over :func:`mmrank.store.stage.embed_catalog` and
:class:`mmrank.store.items.ItemStore`.

``mmrank.cli`` registers these two functions as top-level commands.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Any, Optional

import typer

from mmrank.device import DEVICE_HELP
from mmrank.errors import MMRankError


def embed(
    run: Path = typer.Option(..., "--run", help="run directory: reads R/data/items.parquet and "
                             "R/encoder/, writes R/embeddings/"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="items per encoder batch (default 256)"),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=0,
                                              help="encode on a local Ray instance with N workers (the ray extra)"),
    backend: Optional[str] = typer.Option(None, "--backend", help="local (default) | redis"),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help="redis://host:port/db"),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Redis key prefix"),
    exact_below: Optional[int] = typer.Option(None, "--exact-below",
                                              help="exact (flat) ANN index below this many items, HNSW "
                                                   "above (default 50000)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="torch threads (1 is fastest on a loaded machine)"),
    reuse_features: Optional[bool] = typer.Option(
        None, "--reuse-features/--no-reuse-features",
        help="take the backbone outputs pre-training cached in R/features/ when they are exactly the "
             "encoder's (default); --no-reuse-features re-encodes every photo and title"),
    config: Optional[Path] = typer.Option(None, "--config", help="a run config YAML (its embed section); "
                                          "flags override it"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the figures (device, items/s, ...) as one "
                                 "JSON document"),
) -> None:
    """Encode the whole catalog into R/embeddings/ (resumable), build the ANN index, switch to it."""
    from mmrank.config import record
    from mmrank.run_config import hardware_config, stage_config
    from mmrank.store.ann import AnnConfig
    from mmrank.store.stage import embed_catalog

    if backend is not None and backend not in ("local", "redis"):
        raise MMRankError(f"--backend: expected local or redis, got {backend!r}")
    flags = dict(batch_size=batch_size, ray_workers=ray_workers, backend=backend, redis_url=redis_url,
                 namespace=namespace, exact_below=exact_below, threads=threads,
                 reuse_features=reuse_features)
    cfg = stage_config("embed", config, {k: v for k, v in flags.items() if v is not None})
    hw = hardware_config(config, device=device)  # a device this machine lacks: one line, before any work
    from mmrank.data.importer import substitutes_of

    for k, v in substitutes_of(run).items():
        if k in ("images", "titles"):
            typer.echo(f"note: {v}")
    from mmrank.threads import configure

    configure(cfg.threads)
    stats = embed_catalog(run, batch_size=cfg.batch_size, ray_workers=cfg.ray_workers,
                          ann=AnnConfig(exact_below=cfg.exact_below),
                          backend=None if cfg.backend == "local" and backend is None else cfg.backend,
                          url=cfg.redis_url, namespace=cfg.namespace, reuse_features=cfg.reuse_features,
                          hardware=hw)
    record(run, "embed", cfg)
    if as_json:
        typer.echo(jsonlib.dumps(stats, default=str))
        return
    idx = stats["index"]
    typer.echo(f"{run}/embeddings: version {stats['version']}, {stats['items']} items "
               f"({stats['encoded']} encoded now, {stats['already_present']} already there) in "
               f"{stats['encode_seconds']} s on {stats['device']} ({stats['items_per_second']} items/s; "
               f"{stats['from_cache']} from the pre-training feature cache); index {idx['kind']} recall@10={idx.get('recall_at_10')}")


def search(
    run: Path = typer.Option(..., "--run", help="run directory with R/embeddings/"),
    text: Optional[str] = typer.Option(None, "--text", help="a text query"),
    image: Optional[Path] = typer.Option(None, "--image", help="an image file (JPEG/PNG) as query"),
    item: Optional[int] = typer.Option(None, "--item", help="an item id: its nearest items"),
    vector: Optional[str] = typer.Option(None, "--vector", help="a query vector: a .npy file of D floats, "
                                         "or D comma-separated numbers"),
    k: int = typer.Option(10, "--k", min=1, help="number of results"),
    as_json: bool = typer.Option(False, "--json", help="print the results as one JSON document"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP + "; where the query towers run"),
) -> None:
    """Top-k items by text, image, item id or vector: one line per result (item id, score, title).

    Text and image queries go through the run's encoder (its query towers); a table of imported
    vectors (`data import --item-vectors`) has none, so it answers --item and --vector only."""
    from mmrank.device import resolve_device
    from mmrank.run_config import hardware_config
    from mmrank.store.items import ItemStore

    dev = resolve_device(hardware_config(None, device=device).device)  # one line, exit 2, if absent
    given = [name for name, v in (("--text", text), ("--image", image), ("--item", item), ("--vector", vector))
             if v is not None]
    if len(given) != 1:
        raise MMRankError(f"give exactly one of --text, --image, --item, --vector (got {len(given)}: "
                          f"{' '.join(given) or 'none'})")
    store = ItemStore.open(run, device=dev)
    try:
        if text is not None:
            hits, query = store.search_text(text, k), {"text": text}
        elif image is not None:
            try:
                data = image.read_bytes()
            except OSError as err:
                raise MMRankError(f"{image}: cannot read ({err.strerror})") from None
            hits, query = store.search_image(data, k), {"image": str(image)}
        elif vector is not None:
            q, where = _query_vector(vector)
            hits, query = store.search_vector(store.check_query(q, where), k), {"vector": where}
        else:
            hits, query = store.search_item(int(item), k), {"item": int(item)}
    finally:
        store.close()
    if as_json:
        typer.echo(jsonlib.dumps({"query": query, "version": store.version, "k": k,
                                  "results": hits}))
    else:
        for h in hits:
            typer.echo(f"{h['item_id']}\t{h['score']:.4f}\t{h['title']}")


def _query_vector(value: str) -> tuple[Any, str]:
    """``--vector``: a ``.npy`` file, or comma-separated numbers -> ``(values, where)``."""
    import numpy as np

    from mmrank.errors import DataError

    if value.strip().endswith(".npy"):
        try:
            return np.load(value, allow_pickle=False), value
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read as a NumPy .npy vector ({err})", file=value) from None
    try:
        return [float(x) for x in value.split(",")], "--vector"
    except ValueError:
        raise DataError("expected comma-separated numbers or a .npy file", file="--vector") from None

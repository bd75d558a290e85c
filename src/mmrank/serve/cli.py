"""`mmrank serve --run R`: the ranking service on uvicorn (a thin shell over :mod:`mmrank.serve.app`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from mmrank.device import DEVICE_HELP
from mmrank.errors import MMRankError


def serve(
    run: Path = typer.Option(..., "--run", help="run directory with encoder/, embeddings/ and ctr/"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes"),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file",
                                                help="file holding the write key (else MMRANK_API_KEY)"),
    read_key_path: Optional[Path] = typer.Option(None, "--read-key-file",
                                                 help="file holding a key that reads must send (else "
                                                      "MMRANK_READ_KEY; default: reads take no key)"),
    strategy: Optional[str] = typer.Option(None, "--strategy",
                                           help="CTR model under R/ctr/ (default: the best trained one)"),
    rerank_model: Optional[str] = typer.Option(None, "--rerank-model",
                                               help="re-ranker under R/rerank/ for /v1/rerank and the "
                                                    "reranked side of /v1/rank (default: armmt, else seqmd, "
                                                    "else the first trained)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="torch threads per forward thread (default: 1)"),
    forward_workers: Optional[int] = typer.Option(None, "--forward-workers", min=1,
                                                  help="forward threads per worker, each scoring whole "
                                                       "batches (default: cores / workers)"),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0.0,
                                      help="longest a batch waits for requests still arriving"),
    max_batch_rows: int = typer.Option(512, "--max-batch-rows", min=1,
                                       help="candidate rows per forward (a larger request runs alone)"),
    max_body_mb: float = typer.Option(16.0, "--max-body-mb", min=0.001, help="larger bodies get 413"),
    max_image_mb: float = typer.Option(8.0, "--max-image-mb", min=0.001, help="larger images get 413"),
    max_image_mpx: float = typer.Option(25.0, "--max-image-mpx", min=0.001,
                                        help="images whose header declares more megapixels get 413"),
    deadline_ms: float = typer.Option(500.0, "--deadline-ms", min=1.0,
                                      help="a request that cannot start in time to finish within this "
                                           "gets 503 with Retry-After at once"),
    rank_concurrency: int = typer.Option(32, "--rank-concurrency", min=1, help="/v1/rank requests at once"),
    rerank_concurrency: int = typer.Option(32, "--rerank-concurrency", min=1, help="/v1/rerank requests at once"),
    search_concurrency: int = typer.Option(4, "--search-concurrency", min=1,
                                           help="/v1/search requests at once"),
    items_concurrency: int = typer.Option(2, "--items-concurrency", min=1, help="POST /v1/items at once"),
    queue_factor: float = typer.Option(2.0, "--queue-factor", min=0.0,
                                       help="requests that may wait per endpoint, as a multiple of its "
                                            "concurrency"),
    rate: Optional[float] = typer.Option(None, "--rate", min=0.0,
                                         help="reads per second per client (read key, else IP), 0 = off "
                                              "(default: off on loopback, 100 elsewhere)"),
    rate_burst: int = typer.Option(200, "--rate-burst", min=1, help="the rate limit's burst"),
    log_level: str = typer.Option("warning", "--log-level"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP + "; the models are moved "
                                         "there once at load, every batch is scored there"),
    config: Optional[Path] = typer.Option(None, "--config", help="a run config YAML (its hardware "
                                          "section); --device overrides it"),
) -> None:
    """Serve /v1/rank, /v1/rerank, /v1/items, /v1/search, /healthz, /metrics and the page at / over HTTP."""
    import uvicorn

    from mmrank.run_config import hardware_config
    from mmrank.serve.bundle import pick_strategy
    from mmrank.serve.config import (ENV_KEY_FILE, ENV_READ_KEY_FILE, EndpointLimit, Settings,
                                     default_read_rate, read_key_file)
    from mmrank.threads import cores

    hw = hardware_config(config, device=device)  # a device this machine lacks: one line, before anything starts
    if not (run / "encoder").exists() or not (run / "embeddings").exists():
        raise MMRankError(f"{run}: not a run with encoder/ and embeddings/ (make one with `mmrank demo`)")
    pick_strategy(run, strategy)  # fail here, with one line, rather than in every worker
    if rerank_model is not None and not (run / "rerank" / rerank_model / "model.safetensors").exists():
        raise MMRankError(f"{run / 'rerank' / rerank_model}: no trained re-ranker (run `mmrank rerank train "
                          f"--run {run} --model {rerank_model}`)")
    key = read_key_file(api_key_file, "MMRANK_API_KEY")
    read_key_file(read_key_path, "MMRANK_READ_KEY")  # a bad file fails here, with one line
    if key is None:
        typer.echo("warning: no API key (MMRANK_API_KEY or --api-key-file): writes will get 401", err=True)

    def limit(n: int) -> EndpointLimit:
        return EndpointLimit(concurrency=n, queue=int(round(n * queue_factor)))

    settings = Settings(
        run=run.resolve(), strategy=strategy, rerank_model=rerank_model, threads=threads or 1,
        device=hw.device, bf16=hw.bf16, pin_memory=hw.pin_memory,
        forward_workers=forward_workers or max(1, cores() // workers), max_wait_ms=max_wait_ms,
        max_batch_rows=max_batch_rows, max_body_bytes=int(max_body_mb * (1 << 20)),
        max_image_bytes=int(max_image_mb * (1 << 20)), max_image_pixels=int(max_image_mpx * 1e6),
        deadline_ms=deadline_ms, rate_per_s=rate if rate is not None else default_read_rate(host),
        rate_burst=rate_burst, limits={"rank": limit(rank_concurrency), "rerank": limit(rerank_concurrency),
                                       "search": limit(search_concurrency),
                                       "items": limit(items_concurrency)})
    os.environ.update({**settings.to_env(),  # read by each worker's app factory
                       ENV_KEY_FILE: str(api_key_file.resolve()) if api_key_file else "",
                       ENV_READ_KEY_FILE: str(read_key_path.resolve()) if read_key_path else ""})
    uvicorn.run("mmrank.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False)

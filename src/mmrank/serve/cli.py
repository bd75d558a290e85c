"""`mmrank serve --run R`: the ranking service on uvicorn (a thin shell over :mod:`mmrank.serve.app`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from mmrank.errors import MMRankError


def serve(
    run: Path = typer.Option(..., "--run", help="run directory with encoder/, embeddings/ and ctr/"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes"),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file",
                                                help="file holding the write key (else MMRANK_API_KEY)"),
    strategy: Optional[str] = typer.Option(None, "--strategy",
                                           help="CTR model under R/ctr/ (default: the best trained one)"),
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
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Serve /v1/rank, /v1/items, /v1/search, /healthz, /metrics and the page at / over HTTP."""
    import uvicorn

    from mmrank.serve.app import read_api_key
    from mmrank.serve.bundle import pick_strategy
    from mmrank.threads import cores

    if not (run / "encoder").exists() or not (run / "embeddings").exists():
        raise MMRankError(f"{run}: not a run with encoder/ and embeddings/ (make one with `mmrank demo`)")
    pick_strategy(run, strategy)  # fail here, with one line, rather than in every worker
    key = read_api_key(api_key_file)
    if key is None:
        typer.echo("warning: no API key (MMRANK_API_KEY or --api-key-file): writes will get 401", err=True)
    env = {"MMRANK_SERVE_RUN": str(run.resolve()), "MMRANK_SERVE_STRATEGY": strategy or "",
           "MMRANK_SERVE_API_KEY_FILE": str(api_key_file.resolve()) if api_key_file else "",
           "MMRANK_SERVE_THREADS": str(threads or 1),
           "MMRANK_SERVE_FORWARD_WORKERS": str(forward_workers or max(1, cores() // workers)),
           "MMRANK_SERVE_MAX_WAIT_MS": str(max_wait_ms),
           "MMRANK_SERVE_MAX_BATCH_ROWS": str(max_batch_rows),
           "MMRANK_SERVE_MAX_BODY": str(int(max_body_mb * (1 << 20)))}
    os.environ.update(env)  # read by each worker's app factory
    uvicorn.run("mmrank.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False)

"""`mmrank rerank ...`: train one re-ranker, compare all of them. Thin shells over
:mod:`mmrank.rerank.stage`.

Every setting comes from the ``rerank`` section of the run config given with ``--config``
(:class:`mmrank.rerank.config.RerankConfig`); the flags given override it; ``R/config.yaml`` records
what ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mmrank.device import DEVICE_HELP
from mmrank.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="Re-rank search lists: ARMMT, SEQ+MD and baselines (logged "
                                             "order, DNN, ARMMT-concat, PRM, MMoE, ESMM), with ablations.")

_CONFIG = typer.Option(None, "--config", help="a run config YAML (its rerank section: model, seeds, models, "
                       "beam, train); flags override it")
_DEVICE = typer.Option(None, "--device", help=DEVICE_HELP)


def _hardware(config: Optional[Path], device: Optional[str]):
    """The hardware section (config file, then --device), checked before any data is read."""
    from mmrank.run_config import hardware_config

    return hardware_config(config, device=device)


def _settings(config: Optional[Path], train: dict[str, Any], **flags: Any):
    from mmrank.run_config import stage_config

    given = {k: v for k, v in flags.items() if v is not None}
    train = {k: v for k, v in train.items() if v is not None}
    if train:
        given["train"] = train
    return stage_config("rerank", config, given)


def _threads(threads: Optional[int]) -> None:
    from mmrank.threads import configure

    configure(threads or None)


@app.command("train")
def train_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (reads RUN/data/lists.parquet, RUN/encoder)"),
    model: Optional[str] = typer.Option(None, "--model", help="dnn | armmt | armmt-concat | prm | mmoe | esmm | "
                                        "seqmd | seqmd-plain | an ablation (default armmt)"),
    seed: Optional[int] = typer.Option(None, help="default 0"),
    epochs: Optional[int] = typer.Option(None, min=1, help="default 1"),
    batch_size: Optional[int] = typer.Option(None, min=1, help="lists per step (default 64)"),
    max_train_lists: Optional[int] = typer.Option(None, help="the latest N training lists only"),
    threads: Optional[int] = typer.Option(None, help="torch threads"),
    config: Optional[Path] = _CONFIG,
    device: Optional[str] = _DEVICE,
) -> None:
    """Train one re-ranker; writes RUN/rerank/<model>/ (weights, vocabularies, config, metrics)."""
    from mmrank.config import record
    from mmrank.rerank.models import MODELS
    from mmrank.rerank.stage import train_model

    s = _settings(config, dict(epochs=epochs, batch_size=batch_size, max_train_lists=max_train_lists),
                  model=model, seed=seed, threads=threads)
    if s.model not in MODELS:
        raise ConfigError(f"--model: expected one of {', '.join(MODELS)}, got {s.model!r}")
    hw = _hardware(config, device)
    _threads(s.threads)
    m = train_model(run, s.model, seed=s.seed, train_cfg=s.train, one_thread_if_busy=s.threads is None,
                    hardware=hw)
    record(run, "rerank", s)
    a = m["auc"]
    typer.echo(f"{s.model}: auc click {a['click']:.4f} cart {a['cart']:.4f} purchase {a['purchase']:.4f} "
               f"ndcg@10 {m['ndcg@10']:.4f} expected_gmv {m['expected_gmv']} -> {run}/rerank/{s.model}/")


@app.command("compare")
def compare_cmd(
    run: Path = typer.Option(..., "--run"),
    seeds: Optional[int] = typer.Option(None, min=1, help="default 3"),
    models: Optional[str] = typer.Option(None, help="comma-separated (default: logged, every model and the "
                                         "ablations)"),
    epochs: Optional[int] = typer.Option(None, min=1),
    batch_size: Optional[int] = typer.Option(None, min=1),
    max_train_lists: Optional[int] = typer.Option(None, help="the latest N training lists only"),
    max_test_lists: Optional[int] = typer.Option(None, help="the first N test lists only"),
    beam: Optional[int] = typer.Option(None, help="> 0: add armmt+beam, the generator-evaluator mode with this "
                                       "beam width"),
    threads: Optional[int] = typer.Option(None),
    config: Optional[Path] = _CONFIG,
    device: Optional[str] = _DEVICE,
) -> None:
    """Train every model over SEEDS seeds; write RUN/rerank/compare.json, compare.md and plots."""
    from mmrank.config import record
    from mmrank.rerank.stage import compare

    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    s = _settings(config, dict(epochs=epochs, batch_size=batch_size, max_train_lists=max_train_lists),
                  seeds=seeds, models=names, max_test_lists=max_test_lists, beam=beam, threads=threads)
    hw = _hardware(config, device)
    _threads(s.threads)
    compare(run, seeds=s.seeds, models=s.models, train_cfg=s.train, max_test_lists=s.max_test_lists,
            beam=s.beam, progress=True, one_thread_if_busy=s.threads is None, hardware=hw)
    record(run, "rerank", s)
    typer.echo((run / "rerank" / "compare.md").read_text())


@app.command("apply")
def apply_cmd(
    run: Path = typer.Option(..., "--run", help="run directory with a trained re-ranker (RUN/rerank/<model>/)"),
    lists: Path = typer.Option(..., "--lists", help="JSON lines, one candidate list per line "
                               "(mmrank.rerank.serving.CandidateList: user_id or history, query, region, ts, "
                               "candidates with item_id and optional price, sales, prod_score, category_id)"),
    model: Optional[str] = typer.Option(None, "--model", help="the re-ranker under RUN/rerank/ (default: armmt, "
                                        "else seqmd, else the first trained)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the JSON lines here (default: print them)"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="lists per forward"),
    threads: Optional[int] = typer.Option(None, help="torch threads"),
    device: Optional[str] = _DEVICE,
) -> None:
    """Re-rank candidate lists offline, as `mmrank serve` answers /v1/rerank: one JSON line per list
    (request_id, model, version, items best first with item_id, rank, score)."""
    import json

    from mmrank.errors import DataError
    from mmrank.rerank.serving import load_reranker, read_lists

    hw = _hardware(None, device)
    _threads(threads)
    todo = read_lists(lists)
    rr = load_reranker(run, model, hardware=hw)
    prepared = []
    for n, lst in todo:
        try:
            prepared.append(rr.prepare(lst))
        except DataError as err:
            raise DataError(f"line {n}: {err.detail}", file=str(lists),
                            column=err.column) from None
    lines = []
    for a in range(0, len(prepared), batch_size):
        lines += [json.dumps(r) for r in rr.score(prepared[a:a + batch_size])]
    text = "\n".join(lines) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"{len(lines)} lists re-ranked by {rr.name} ({rr.version}) -> {out}", err=True)
    else:
        typer.echo(text, nl=False)

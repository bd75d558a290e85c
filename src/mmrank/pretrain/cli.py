"""`mmrank pretrain --run R [--variant V]` and `mmrank pretrain compare --run R`.

Under torchrun (gloo on the CPU)::

    torchrun --standalone --nproc_per_node=2 -m mmrank.cli -- pretrain --run R

(the ``--`` ends torchrun's options; without it torchrun reads ``--run`` as ``--run-path``).
``--device cuda`` (or the run config's ``hardware.device``) trains on the GPU with bf16 autocast;
under torchrun each rank takes the GPU of its ``LOCAL_RANK`` and the ranks talk over NCCL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mmrank.device import DEVICE_HELP
from mmrank.errors import MMRankError

app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                  help="Semantic-aware contrastive pre-training (SCL) and its Table 2 comparison.")


def _config(config: Optional[Path], **flags: Any):
    """The `pretrain` section: defaults, then the run config file's section, then the flags given."""
    from mmrank.run_config import stage_config

    return stage_config("pretrain", config, {k: v for k, v in flags.items() if v is not None})


def _notes(run: Path) -> None:
    from mmrank.data.importer import substitutes_of

    subs = substitutes_of(run)
    if "pairs" in subs:
        typer.echo(f"note: {subs['pairs']}")


_RUN = typer.Option(None, "--run", help="run directory (reads R/data, writes R/encoder)")
_CONFIG = typer.Option(None, "--config", help="a run config YAML (its pretrain section; a flat "
                       "PretrainConfig file works too); flags override it")
_IMG = typer.Option(None, "--image-encoder", help="e.g. efficientnet-lite0, cnn-small, hf-clip:DIR")
_TXT = typer.Option(None, "--text-encoder", help="e.g. minilm, hash-bow, hf-clip:DIR")
_SIZE = typer.Option(None, "--image-size", help="image input side (default: the photos' size)")
_BLOCKS = typer.Option(None, "--trainable-blocks", help="fine-tune the last N image blocks")
_EPOCHS = typer.Option(None, "--epochs")
_BATCH = typer.Option(None, "--batch-size", help="global batch")
_QUEUE = typer.Option(None, "--queue-size", help="MoCo negatives K (paper: 196800)")
_STEPS = typer.Option(None, "--max-steps")
_CKPT = typer.Option(None, "--checkpoint-every", help="steps between checkpoints")
_RESUME = typer.Option(None, "--resume/--no-resume", help="resume from the last checkpoint")
_SEED = typer.Option(None, "--seed")
_DEVICE = typer.Option(None, "--device", help=DEVICE_HELP)


def _hardware(config: Optional[Path], device: Optional[str]):
    """The run config's ``hardware`` section with ``--device`` over it, resolved at once (``cuda``
    on a machine without it: one line, exit 2, before anything is read)."""
    from mmrank.config import read_mapping
    from mmrank.run_config import SECTIONS, hardware_config

    # a flat PretrainConfig file (no section names) has no hardware section: the defaults
    flat = config is not None and not any(k in SECTIONS for k in read_mapping(config))
    return hardware_config(None if flat else config, device=device)


@app.callback()
def pretrain_cmd(
    ctx: typer.Context,
    run: Optional[Path] = _RUN,
    variant: Optional[str] = typer.Option(None, "--variant",
                                          help="off-the-shelf | clip-e | scl | scl-no-triplet | "
                                               "scl-no-triplet-no-moco | scl-finetune (end to end) "
                                               "| ... (default scl)"),
    config: Optional[Path] = _CONFIG,
    image_encoder: Optional[str] = _IMG, text_encoder: Optional[str] = _TXT,
    image_size: Optional[int] = _SIZE, trainable_blocks: Optional[int] = _BLOCKS,
    epochs: Optional[int] = _EPOCHS, batch_size: Optional[int] = _BATCH,
    queue_size: Optional[int] = _QUEUE, max_steps: Optional[int] = _STEPS,
    checkpoint_every: Optional[int] = _CKPT, resume: Optional[bool] = _RESUME,
    seed: Optional[int] = _SEED, device: Optional[str] = _DEVICE,
) -> None:
    """Train one variant on R's pairs; write R/encoder/ (weights, config, version, metrics.json)."""
    if ctx.invoked_subcommand is not None:
        return
    hw = _hardware(config, device)
    if run is None:
        raise MMRankError("mmrank pretrain: --run R is required")
    from mmrank.pretrain.stage import pretrain

    cfg = _config(config, variant=variant, image_encoder=image_encoder, text_encoder=text_encoder,
                  image_size=image_size, trainable_blocks=trainable_blocks, epochs=epochs,
                  batch_size=batch_size, queue_size=queue_size, max_steps=max_steps,
                  checkpoint_every=checkpoint_every, resume=resume, seed=seed)
    _notes(run)
    pretrain(run, cfg, hardware=hw)


@app.command("compare")
def compare_cmd(
    run: Path = typer.Option(..., "--run", help="run directory"),
    config: Optional[Path] = _CONFIG,
    image_encoder: Optional[str] = _IMG, text_encoder: Optional[str] = _TXT,
    image_size: Optional[int] = _SIZE, trainable_blocks: Optional[int] = _BLOCKS,
    epochs: Optional[int] = _EPOCHS, batch_size: Optional[int] = _BATCH,
    queue_size: Optional[int] = _QUEUE, max_steps: Optional[int] = _STEPS,
    seed: Optional[int] = _SEED, device: Optional[str] = _DEVICE,
    seeds: int = typer.Option(1, "--seeds", min=1, help="train each variant with this many seeds "
                              "(--seed, --seed+1, ...): mean ± std"),
    variants: Optional[str] = typer.Option(None, "--variants", help="comma-separated rows (default: "
                                           "popularity and the Table 2 rows); MOON2.0 rows: moe, "
                                           "align, coaug, filter, moon2"),
) -> None:
    """Table 2: popularity, off-the-shelf, clip-e, scl and its ablations (--variants: any rows,
    MOON2.0's moe/align/coaug/filter/moon2 included) ->
    R/pretrain/compare.json + compare.md (and the SCL encoder as R/encoder/)."""
    from mmrank.pretrain.stage import compare

    hw = _hardware(config, device)
    cfg = _config(config, image_encoder=image_encoder, text_encoder=text_encoder,
                  image_size=image_size, trainable_blocks=trainable_blocks, epochs=epochs,
                  batch_size=batch_size, queue_size=queue_size, max_steps=max_steps, seed=seed)
    _notes(run)
    if variants is None:
        compare(run, cfg, seeds=seeds, hardware=hw)
    else:
        rows = tuple(v.strip() for v in variants.split(",") if v.strip())
        if not rows:
            raise MMRankError("--variants: name at least one row")
        compare(run, cfg, variants=rows, seeds=seeds, hardware=hw)
    md = run / "pretrain" / "compare.md"
    if md.exists():
        typer.echo(md.read_text())


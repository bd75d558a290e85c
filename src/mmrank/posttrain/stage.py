"""Post-training on a run: ``R/posttrain/``, the post-trained embedding table, from the frozen
pre-trained one and the clicks before the CTR cutoff.

Layout (``R`` the run)::

    R/posttrain/CURRENT, v-<version>/   the post-trained table, in the format of R/embeddings
    R/posttrain/adapter.safetensors     the adapter (maps any pre-trained vector, a new item's too)
    R/posttrain/summary.json            config, pairs, both losses per epoch, the cutoff, seconds
    R/posttrain/lineage.json            the representations it adapts (encoder version), the config
                                        hash, the cutoff and the digest of the clicks before it

Point in time: only ``click`` events with ``ts <`` the CTR cutoff are read (``split_ts`` of
``R/data/manifest.json``, else the earliest test row of ``R/data/ctr_samples.parquet``); the table's
version is a hash of exactly those clicks, the representations and the config, so events of the test
period cannot change it (tested).

Example::

    >>> from mmrank.posttrain.stage import run_posttrain
    >>> run_posttrain(Path("runs/demo"))                                   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console

from mmrank import lineage
from mmrank.device import HardwareConfig, describe, resolve_device
from mmrank.errors import DataError, MMRankError
from mmrank.posttrain.config import PosttrainConfig
from mmrank.posttrain.train import behaviour_pairs, to_rows, train_adapter

console = Console(stderr=True)


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False)
POSTTRAIN = "posttrain"


def posttrain_root(run: str | Path) -> Path:
    return Path(run) / POSTTRAIN


def cutoff_ts(run: str | Path) -> int:
    """The CTR training cutoff: rows at or after it are the CTR test period (``split_ts``)."""
    run = Path(run)
    mpath = run / "data" / "manifest.json"
    if mpath.exists():
        split = json.loads(mpath.read_text()).get("split_ts")
        if split is not None:
            return int(split)
    path = run / "data" / "ctr_samples.parquet"
    if not path.exists():
        raise DataError("no such file, and no split_ts in data/manifest.json: the CTR cutoff is unknown",
                        file=str(path))
    from mmrank.data.io import read_table

    t = read_table(path, "ctr_samples", columns=["ts", "split"])
    test = t.column("split").to_numpy(zero_copy_only=False) == "test"
    if not test.any():
        raise DataError("no 'test' row: the CTR cutoff is unknown", file=str(path), column="split")
    return int(t.column("ts").to_numpy()[test].min())


def clicks_before(run: str | Path, cutoff: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user, item, ts)`` of every click strictly before ``cutoff``, in ``(ts, user, item)`` order."""
    from mmrank.data.io import read_clicks

    user, item, ts = read_clicks(run, cutoff, "post-training")
    order = np.lexsort((item, user, ts))
    return user[order], item[order], ts[order]


def clicks_digest(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (user, item, ts):
        h.update(np.ascontiguousarray(a, np.int64).tobytes())
    return h.hexdigest()[:lineage.HEX]


def config_hash(cfg: PosttrainConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def base_source(run: str | Path) -> str:
    """The pre-trained representations post-training adapts, as :func:`mmrank.ctr.representations.
    item_vectors` names them (``embeddings:<v>`` or ``encoder:<v>``), read without encoding anything."""
    run = Path(run)
    if (run / "embeddings").exists():
        from mmrank.store.backends import current_version

        return f"embeddings:{current_version(run / 'embeddings')}"
    version = run / "encoder" / "version.txt"
    if version.exists():
        return f"encoder:{version.read_text().strip()}"
    raise MMRankError(f"{run}: nothing to post-train: neither {run}/embeddings (run `mmrank embed`) nor "
                      f"{run}/encoder (run `mmrank pretrain`) exists")


def posttrain_inputs(run: str | Path, cfg: PosttrainConfig, source: str | None = None,
                     clicks: tuple | None = None) -> dict[str, str]:
    """What ``R/posttrain`` is made from: the representations, the config, the cutoff and its clicks."""
    cut = cutoff_ts(run)
    clicks = clicks if clicks is not None else clicks_before(run, cut)
    return {"representations": source or base_source(run), "config": config_hash(cfg),
            "cutoff": str(cut), "clicks": clicks_digest(*clicks)}


def run_posttrain(run: str | Path, cfg: PosttrainConfig | None = None, *, progress: bool = True,
                  hardware: HardwareConfig | None = None) -> dict:
    """Post-train the run's item representations on ``hardware``'s device (None: auto); write
    ``R/posttrain/``. Returns the summary (``device`` says where it ran)."""
    import torch
    from safetensors.torch import save_file

    from mmrank.ctr.representations import item_vectors
    from mmrank.store.backends import create_table

    run = Path(run)
    hw = hardware or HardwareConfig()
    dev = resolve_device(hw.device)        # first: a device this machine lacks fails at once
    cfg = cfg or PosttrainConfig()
    cut = cutoff_ts(run)
    clicks = clicks_before(run, cut)
    ids, vecs, source = item_vectors(run)              # frozen pre-trained vectors, L2-normalised
    inputs = posttrain_inputs(run, cfg, source, clicks)
    version = f"post-{lineage.digest_inputs(inputs)}"
    pairs = to_rows(behaviour_pairs(*clicks, cfg), ids, cfg.max_pairs)
    _say(f"[posttrain] {len(clicks[0])} clicks before ts {cut}: {len(pairs['session'][1])} session "
                  f"pairs, {len(pairs['next'][1])} next-click pairs; {len(ids)} items, adapting {source}")
    model, history = train_adapter(vecs, pairs, cfg, progress=progress, log=_say, device=dev, bf16=hw.bf16,
                                   pin_memory=hw.pin_memory)
    out = model.adapt(torch.from_numpy(vecs)).numpy().astype(np.float32)   # fp32 on the device, back here
    zero = ~vecs.any(axis=1)                           # no representation before: none after either
    out[zero] = 0.0

    root = posttrain_root(run)
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("v-*"):                       # one table: the one made now
        shutil.rmtree(old)
    table = create_table(root, version=version, dim=out.shape[1], encoder_name="posttrain")
    try:
        table.put(ids, out, version=version)
        table.publish()
    finally:
        table.close()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.adapter.state_dict().items()},
              str(root / "adapter.safetensors"))
    summary = {"version": version, "representations": source, "cutoff_ts": cut, "items": int(len(ids)),
               "clicks": int(len(clicks[0])), "config": cfg.model_dump(mode="json"), "device": describe(dev),
               **history}
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    lineage.stamp(root, inputs, digest=version)
    return summary


def ensure_posttrain(run: str | Path, cfg: PosttrainConfig | None = None, *, progress: bool = True,
                     hardware: HardwareConfig | None = None) -> bool:
    """Post-train when ``R/posttrain`` is missing or was made from other representations, cutoff or clicks
    (or, when ``cfg`` is given, another config; without, the config it was made with stands). True when
    it ran."""
    root = posttrain_root(run)
    inputs = posttrain_inputs(run, cfg or PosttrainConfig())
    if cfg is None:
        inputs.pop("config")
    if (root / "CURRENT").exists() and lineage.matches(root, inputs):
        return False
    _say(f"[posttrain] {root} is missing or stale: post-training now")
    run_posttrain(run, cfg, progress=progress, hardware=hardware)
    return True


def posttrained_vectors(run: str | Path, item_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The post-trained table as :func:`mmrank.ctr.representations.item_vectors` gives the pre-trained
    one: ``(ids (N,), vectors (N, D) unit rows, "posttrain:<version>")``; refused (``StaleArtifact``)
    when made from other representations, cutoff or clicks than the run's now."""
    from mmrank.store.backends import open_table
    from mmrank.vectors import l2_normalise

    run = Path(run)
    root = posttrain_root(run)
    if not (root / "CURRENT").exists():
        raise MMRankError(f"{root}: no post-trained table (run `mmrank posttrain --run {run}`)")
    check_posttrain(run)
    table = open_table(root)
    try:
        ids = np.unique(np.asarray(table.ids() if item_ids is None else item_ids, np.int64))
        return ids, l2_normalise(table.get(ids, missing="zero")), f"posttrain:{table.version}"
    finally:
        table.close()


def check_posttrain(run: str | Path) -> None:
    """Refuse a post-trained table made from other representations, cutoff or clicks than the run's now
    (:class:`mmrank.lineage.StaleArtifact`); the config it was made with is taken as given."""
    run = Path(run)
    rec = lineage.read(posttrain_root(run))
    inputs = posttrain_inputs(run, PosttrainConfig())
    inputs.pop("config")
    if rec is not None:
        lineage.check(posttrain_root(run), inputs, f"mmrank posttrain --run {run}")

"""Export a run's towers and CTR models to ONNX, checked against PyTorch with ONNX Runtime.

What is exported (under ``R/export/onnx/``):

* ``image_backbone.onnx``: the frozen image backbone, preprocessed pixels ``(B, 3, S, S)`` -> backbone
  features (the input of the towers below). The text backbone is not exported: its tokenizer is Python;
  give the towers the text backbone's output (``mmrank.encoders``) or export it with its own library.
* ``item_tower.onnx`` (image features, title features -> item vector), ``text_query.onnx``,
  ``image_query.onnx``: the trained towers of ``R/encoder`` on backbone features; unit vectors.
* ``ctr-<strategy>.onnx`` for each trained ``R/ctr/<strategy>``: the click logit of a batch. The inputs
  are the model's batch tensors (:func:`mmrank.ctr.data.make_batch`: ids, histories, mask) and, for the
  strategies that use representations, the vector table ``vectors (V, D)`` that ``item_v`` /
  ``hist_item_v`` index (as :func:`mmrank.ctr.scoring.score` takes it), so a new item is scored from its
  representation without exporting again.
* ``manifest.json``: per file its inputs and outputs (names, dtypes, shapes), the encoder version, and the
  largest difference from PyTorch that ONNX Runtime gave on a check batch of another size than the
  export's (the export fails when it exceeds :data:`TOLERANCE`).

The graphs come from PyTorch's TorchScript-based exporter (``dynamo=False``): the CTR models' packed
histories (a data-dependent ``nonzero``) trace to one graph for any batch; :mod:`mmrank.models.layers`
takes its export-friendly paths while exporting (no layout chosen from the data, ``scatter_add`` for
segment sums).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrank.durable import write_text
from mmrank.errors import MMRankError

TOLERANCE = 1e-4      # largest |ONNX Runtime - PyTorch| accepted on the check batch (logits and vectors)
OPSET = 17            # ScatterElements with reduction="add" needs 16 or later
CTR_INPUTS = ("item", "category", "hist_item", "hist_category", "mask", "region", "user", "position",
              "item_v", "hist_item_v", "simtier")


class _CtrGraph(torch.nn.Module):
    """A CTR model as a function of positional tensors (ONNX has no dict inputs), the vector table
    passed in like :func:`mmrank.ctr.scoring.score` passes it."""

    def __init__(self, model: torch.nn.Module, names: list[str], with_vectors: bool) -> None:
        super().__init__()
        from mmrank.models.layers import ItemVectors

        self.model, self.names, self.with_vectors = model, names, with_vectors
        self.tables = [m for m in model.modules() if isinstance(m, ItemVectors)]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.names, xs))
        if self.with_vectors:
            for t in self.tables:
                t.table = xs[-1]
        return self.model(batch)["logit"]


class _Tower(torch.nn.Module):
    """``owner.<method>(*xs)`` as a module's forward (``owner`` registered, so its weights are the graph's)."""

    def __init__(self, owner: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.owner, self.method = owner, method

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return getattr(self.owner, self.method)(*xs)


def _onnx_runtime():
    try:
        import onnx  # noqa: F401  (the exporter writes through it)
        import onnxruntime
    except ImportError as err:
        raise MMRankError(f"mmrank export: {err.name} is not installed (pip install 'mmrank[export]': onnx "
                          "writes the graphs, ONNX Runtime checks each against PyTorch)") from None
    return onnxruntime


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str], path: Path,
            dynamic: dict[str, dict[int, str]]) -> None:
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)   # the TorchScript exporter's notice
        torch.onnx.export(module, args, str(tmp), input_names=names, output_names=["out"],
                          dynamic_axes={**dynamic, "out": {0: "batch"}}, opset_version=OPSET, dynamo=False)
    tmp.replace(path)


def _check(path: Path, module: torch.nn.Module, names: list[str], args: tuple[torch.Tensor, ...]) -> float:
    """Largest |ONNX Runtime - PyTorch| on ``args``; MMRankError above :data:`TOLERANCE`."""
    ort = _onnx_runtime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = module(*args).numpy()
    used = {i.name for i in session.get_inputs()}      # an input the graph never reads is dropped
    out = session.run(None, {n: a.numpy() for n, a in zip(names, args) if n in used})[0]
    diff = float(np.abs(out - ref).max()) if ref.size else 0.0
    if not diff <= TOLERANCE:
        raise MMRankError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.3g} (> {TOLERANCE:g}) "
                          f"on the check batch")
    return diff


def _describe(path: Path) -> dict[str, Any]:
    ort = _onnx_runtime()
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"inputs": [{"name": i.name, "type": i.type, "shape": i.shape} for i in s.get_inputs()],
            "outputs": [{"name": o.name, "type": o.type, "shape": o.shape} for o in s.get_outputs()]}


def _batch_dims(names: list[str], args: tuple[torch.Tensor, ...], fixed: tuple[str, ...] = ()) -> dict:
    return {n: {0: ("rows" if n == "vectors" else "batch")} for n, a in zip(names, args)
            if a.dim() > 0 and n not in fixed}


def export_encoder(run: Path, out: Path, rng: np.random.Generator) -> dict[str, Any]:
    """The image backbone and the three towers of ``R/encoder``; their manifest entries."""
    from mmrank.pretrain.item_encoder import load_item_encoder

    enc = load_item_encoder(run)
    cfg, model = enc.config, enc.model.eval()
    d_img, d_txt = int(cfg["d_image"]), int(cfg["d_text"])
    entries: dict[str, Any] = {}

    def gen(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    towers = {"item_tower": ("item", ["image_features", "title_features"], (d_img, d_txt)),
              "text_query": ("text_query", ["text_features"], (d_txt,)),
              "image_query": ("image_query", ["image_features"], (d_img,))}
    if getattr(model, "image_tail", None) is not None:
        raise MMRankError(f"{run}/encoder: its image backbone has a trained tail; exporting it is not "
                          "supported yet (export the towers of an encoder with a frozen backbone)")
    for name, (fn, names, dims) in towers.items():
        tower = _Tower(model, fn).eval()
        path = out / f"{name}.onnx"
        _export(tower, tuple(gen(4, d) for d in dims), names, path, {n: {0: "batch"} for n in names})
        diff = _check(path, tower, names, tuple(gen(7, d) for d in dims))
        entries[path.name] = {"max_abs_diff": diff, **_describe(path)}

    size = int(cfg.get("image_size") or 64)
    backbone = _Tower(enc.image_backbone, "frozen").eval()
    path = out / "image_backbone.onnx"
    _export(backbone, (gen(2, 3, size, size),), ["pixels"], path, {"pixels": {0: "batch"}})
    diff = _check(path, backbone, ["pixels"], (gen(3, 3, size, size),))
    entries[path.name] = {"max_abs_diff": diff, "image_size": size, **_describe(path)}
    return {"encoder_version": enc.version, "files": entries}


def export_ctr(run: Path, strategy: str, out: Path) -> dict[str, Any]:
    """``R/ctr/<strategy>`` as ``ctr-<strategy>.onnx``; its manifest entry."""
    from mmrank.ctr.artifacts import load_model
    from mmrank.ctr.data import load_samples, make_batch
    from mmrank.ctr.representations import item_vectors, vector_table

    model, space, conf = load_model(run, strategy, attach_vectors=True)
    model.eval()
    samples = load_samples(run / "data" / "ctr_samples.parquet")
    enc = space.encode(samples)
    if len(enc) < 2:
        raise MMRankError(f"{run}/data/ctr_samples.parquet: fewer than 2 samples to trace and check with")
    history_len = model.cfg.history_len
    n_trace, n_check = min(64, len(enc) - 1), min(37, len(enc) - 1)
    batches = [make_batch(enc, rows, history_len)
               for rows in (np.arange(n_trace), np.arange(len(enc) - n_check, len(enc)))]
    names = [n for n in CTR_INPUTS if n in batches[0]]
    with_vectors = model.cfg.uses_vectors
    args: list[tuple[torch.Tensor, ...]] = []
    table = None
    if with_vectors:
        ids, vecs, _ = item_vectors(run)
        table = vector_table(space, ids, vecs)
    for b in batches:
        args.append(tuple(b[n] for n in names) + ((table,) if with_vectors else ()))
    all_names = names + (["vectors"] if with_vectors else [])
    graph = _CtrGraph(model, names, with_vectors).eval()
    path = out / f"ctr-{strategy}.onnx"
    _export(graph, args[0], all_names, path, _batch_dims(all_names, args[0]))
    diff = _check(path, graph, all_names, args[1])
    return {"max_abs_diff": diff, "strategy": strategy, "history_len": history_len,
            "encoder_version": conf.get("encoder_version"), **_describe(path)}


def export_run(run: str | Path, fmt: str = "onnx", strategies: list[str] | None = None,
               seed: int = 0) -> dict[str, Any]:
    """Export what ``run`` has trained (encoder towers; every ``R/ctr/<strategy>``, or ``strategies``)
    to ``R/export/<fmt>/`` and write its ``manifest.json``; returns the manifest."""
    run = Path(run)
    if fmt != "onnx":
        raise MMRankError(f"mmrank export --format {fmt}: only 'onnx' is supported")
    _onnx_runtime()
    have = sorted(p.name for p in (run / "ctr").iterdir() if (p / "model.safetensors").exists()) \
        if (run / "ctr").is_dir() else []
    wanted = have if strategies is None else strategies
    missing = [s for s in wanted if s not in have]
    if missing:
        raise MMRankError(f"{run}/ctr: no trained model for {', '.join(missing)} (trained: "
                          f"{', '.join(have) or 'none'})")
    has_encoder = (run / "encoder" / "weights.safetensors").exists()
    if not has_encoder and not wanted:
        raise MMRankError(f"{run}: nothing to export (no R/encoder, no trained R/ctr/<strategy>)")
    out = run / "export" / fmt
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest: dict[str, Any] = {"format": fmt, "opset": OPSET, "tolerance": TOLERANCE,
                                "torch": torch.__version__, "files": {}}
    if has_encoder:
        e = export_encoder(run, out, np.random.default_rng(seed))
        manifest["encoder_version"] = e["encoder_version"]
        manifest["files"].update(e["files"])
    for s in wanted:
        manifest["files"][f"ctr-{s}.onnx"] = export_ctr(run, s, out)
    write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest

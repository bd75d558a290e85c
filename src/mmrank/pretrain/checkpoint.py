"""Training checkpoints in safetensors, written atomically by rank 0 (:mod:`mmrank.durable`).

One file holds the online model, the momentum encoder, the queue, the loss parameters (temperature)
and the optimizer's moments, with the global step in its metadata. Loading never unpickles.

Device: the file holds host copies of every tensor (a CUDA run saves what a CPU run reads); loading
puts them on the ``device`` given (the modules' own), and ``load_state_dict`` copies them into the
modules and the optimizer wherever those live.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mmrank.durable import commit_file, temp_path
from mmrank.errors import MMRankError

FILE = "last.safetensors"


def save_checkpoint(path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    step: int, meta: dict[str, str] | None = None) -> Path:
    """Write ``path/last.safetensors``: ``<name>.<key>`` for each module, ``optim.<i>.<key>``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        for k, v in mod.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().to("cpu", copy=True).contiguous()
    for i, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"optim.{i}.{k}"] = t.detach().to("cpu", copy=True).contiguous()
    tmp = temp_path(path / FILE)
    save_file(tensors, str(tmp), metadata={"step": str(step), **(meta or {})})
    commit_file(tmp, path / FILE)
    return path / FILE


def load_checkpoint(path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    device: torch.device | str = "cpu") -> tuple[int, dict[str, str]]:
    """Restore what :func:`save_checkpoint` wrote (tensors read onto ``device``); returns
    ``(step, metadata)``."""
    file = Path(path) / FILE
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError) as err:
        raise MMRankError(f"{file}: unreadable checkpoint ({err})") from None
    for name, mod in modules.items():
        pre = f"{name}."
        state = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
        missing, unexpected = mod.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MMRankError(f"{file}: checkpoint does not match the model ({name}: missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}); delete it to restart")
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            # the step count stays a host scalar (a non-capturable optimizer reads it on the host)
            opt_state.setdefault(int(i), {})[key] = v.cpu() if key == "step" else v
    sd = optimizer.state_dict()
    sd["state"] = opt_state
    optimizer.load_state_dict(sd)
    return int(meta.get("step", "0")), meta

"""Where tensors live and at what precision: the run config's ``hardware`` section.

``device: auto`` takes CUDA when the machine has it, else the CPU; ``cpu``, ``cuda`` and ``cuda:N``
name one. Every stage takes it (``--device`` on each command). ``device: cuda`` on a machine without
CUDA is a one-line error (exit 2), not a fallback.

``bf16`` turns on bf16 autocast on CUDA: parameters, gradients and optimiser state stay fp32 (the
master weights), matmuls and convolutions run in bf16. The CPU never autocasts, so the CPU path and
its figures are unchanged. Batches move with pinned host memory and non-blocking copies
(:func:`to_device`).

Example::

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> HardwareConfig().device
    'auto'
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from pydantic import Field

from mmrank.config import StrictModel
from mmrank.errors import ConfigError, MMRankError

if TYPE_CHECKING:  # torch is imported where it is used: a command's --help stays light
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
# The help of every stage command's --device flag.
DEVICE_HELP = ("auto | cpu | cuda | cuda:N (default: the run config's hardware.device, auto: CUDA when "
               "present)")


class DeviceError(MMRankError):
    """A device the config names that this machine does not have."""


class HardwareConfig(StrictModel):
    """Where every stage runs: the device, and bf16 autocast on CUDA."""

    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        description="auto (CUDA when present, else cpu) | cpu | cuda | cuda:N")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (fp32 master weights); the CPU "
                       "never autocasts")
    pin_memory: bool = Field(True, description="host batches in pinned memory, copied "
                             "non-blocking (CUDA only)")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device ``spec`` names on this machine.

    Raises:
        DeviceError: ``cuda`` / ``cuda:N`` on a machine without CUDA (or without GPU N).
        ConfigError: a spec that is none of auto, cpu, cuda, cuda:N.
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    s = (spec or "auto").strip().lower()
    if s == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceError(f"device {s}: this machine has no CUDA device (torch {torch.__version__}, "
                              f"{build}); use --device cpu or --device auto")
        n = torch.cuda.device_count()
        idx = int(s[5:]) if s.startswith("cuda:") else local_rank() % n
        if idx >= n:
            raise DeviceError(f"device {s}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return torch.device("cuda", idx)
    raise ConfigError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")


def local_rank() -> int:
    """torchrun's ``LOCAL_RANK`` (0 in one process): which GPU of the node a rank takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def dist_backend(device: torch.device) -> str:
    """torch.distributed backend for ``device``: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def autocast(device: torch.device, bf16: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``bf16``; a no-op context on the CPU (its figures stay fp32)."""
    import torch

    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device, pin: bool = True) -> torch.Tensor:
    """``x`` on ``device``: from pinned host memory, non-blocking, when it goes to CUDA."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        if pin and not x.is_pinned():
            x = x.pin_memory()
        return x.to(device, non_blocking=True)
    return x.to(device)


def batch_to(batch: Any, device: torch.device | None, pin: bool = True) -> Any:
    """A batch on ``device`` (:func:`to_device`: pinned, non-blocking to CUDA): a tensor, or each tensor
    of a dict; anything else (strings) as it is. ``device`` None, or a dict already there: ``batch``
    itself."""
    import torch

    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return to_device(batch, device, pin)
    if isinstance(batch, dict):
        if all(not isinstance(v, torch.Tensor) or v.device == device for v in batch.values()):
            return batch
        return {k: to_device(v, device, pin) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def model_device(module: torch.nn.Module, device: torch.device | None = None) -> torch.device:
    """``device``, or where ``module``'s weights are (its first parameter, else buffer); the CPU for a
    module without any."""
    import torch

    if device is not None:
        return device
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Autocast off on ``x``'s device for a block that must compute in fp32 (logits, log-sum-exps,
    similarities) inside a bf16 autocast (CUDA); a no-op context when no autocast is on (the CPU path)."""
    import torch

    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def describe(device: torch.device) -> str:
    """``cpu (2 threads)`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``: for logs and reports."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (timings on CUDA); nothing on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


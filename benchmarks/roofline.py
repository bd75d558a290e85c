"""The machine's limits, measured in the same run as a speed benchmark, and the share of them a path
reaches (imported by the other benchmarks; run alone it prints the machine's figures).

* ``matmul_gflops(dtype)``: the best of a few timed square matmuls (n = 2048) at that precision, on
  the threads torch is set to use: the compute roof.
* ``memory_gbps()``: a 512 MB tensor copy (bytes read + written per second): the bandwidth roof.
* ``count_flops(fn)``: the FLOPs ``fn()`` runs, as ``torch.utils.flop_counter`` counts them (matmuls,
  convolutions and attention; gathers, element-wise work and optimiser updates count 0, so the limit
  is the compute roof of the matmuls the model needs, an upper bound on the samples/s it can reach).
* ``matmul_shapes(fn)`` / ``matmul_seconds(shapes)``: the matmuls ``fn()`` runs, replayed alone at
  their own shapes: the share of the roof those shapes reach bounds the share the whole path can.
* ``roofline_line(...)``: "limit = roof / FLOPs per sample; reached = measured / limit".

    python benchmarks/roofline.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmrank.device import synchronize


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int | None = None, repeats: int = 5,
                  device: torch.device | str = "cpu") -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n x n`` by ``n x n`` matmul in ``dtype`` on ``device``
    (n: 2048 on the CPU, 8192 on CUDA, where a small matmul does not fill the GPU)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def memory_gbps(mb: int = 512, repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """Best-of-``repeats`` GB/s of copying ``mb`` MB (read + write) on ``device``."""
    device = torch.device(device)
    src = torch.ones(mb * 2 ** 20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (``torch.utils.flop_counter``: matmul-type ops)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


_MATMULS = {"mm", "addmm", "bmm", "baddbmm"}


def matmul_shapes(fn: Callable[[], object]) -> list[tuple[str, tuple, torch.dtype]]:
    """The matmuls ``fn()`` runs (name, input shapes, dtype), as the dispatcher sees them (after
    autocast: bf16 matmuls are seen in bf16)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[tuple[str, tuple, torch.dtype]] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            name = func.overloadpacket.__name__
            if name in _MATMULS:
                ts = [a for a in args if isinstance(a, torch.Tensor)]
                seen.append((name, tuple(tuple(t.shape) for t in ts), ts[-1].dtype))
            return func(*args, **(kwargs or {}))

    with Spy():
        fn()
    return seen


def matmul_seconds(shapes: list[tuple[str, tuple, torch.dtype]], repeats: int = 5,
                   device: torch.device | str = "cpu") -> float:
    """Best-of-``repeats`` seconds to run those matmuls back to back on fresh operands of the same
    shapes and dtypes: what the model's matmuls cost at their own (often small) shapes, the time no
    fusion of the work around them can go below."""
    ops = {"mm": torch.mm, "addmm": torch.addmm, "bmm": torch.bmm, "baddbmm": torch.baddbmm}
    device = torch.device(device)
    calls = [(ops[name], [torch.randn(s).to(device=device, dtype=dtype) for s in dims])
             for name, dims, dtype in shapes]
    for op, xs in calls:
        op(*xs)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for op, xs in calls:
            op(*xs)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def machine(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
            device: torch.device | str = "cpu") -> dict[str, float]:
    """``{"fp32": GFLOP/s, "bf16": GFLOP/s, "memory": GB/s}`` on ``device`` (the CPU: torch's
    current thread count)."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    out = {names[d]: matmul_gflops(d, device=device) for d in dtypes}
    out["memory"] = memory_gbps(device=device)
    return out


def machine_line(m: dict[str, float], device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    parts = [f"matmul {k} {v:,.0f} GFLOP/s" for k, v in m.items() if k != "memory"]
    where = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    return f"machine ({where}): {', '.join(parts)}, memory {m['memory']:,.1f} GB/s"


def roofline_line(name: str, rate: float, flops_per_unit: float, roof_gflops: float,
                  precision: str = "fp32", unit: str = "samples") -> str:
    """``name: F MFLOP per unit -> limit L units/s at the PRECISION matmul roof; reached S%``."""
    limit = roof_gflops * 1e9 / max(flops_per_unit, 1.0)
    one = unit[:-3] + "y" if unit.endswith("ies") else unit[:-1]
    return (f"roofline {name}: {flops_per_unit / 1e6:,.2f} MFLOP per {one} -> limit "
            f"{limit:,.0f} {unit}/s at the {precision} matmul roof; measured {rate:,.0f} {unit}/s = "
            f"{rate / limit:.1%} of it")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line(machine(device=args.device), args.device))


if __name__ == "__main__":
    main()

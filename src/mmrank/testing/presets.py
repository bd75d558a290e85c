"""The public-format fixtures (``tests/fixtures``) with the photos the formats keep outside their tables,
tiny settings of every stage, and `mmrank` run in a fresh process (the import, config and error tests)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"

# Tiny encoders and models: every stage runs in seconds on a few dozen items.
TINY_CONFIG = """\
pretrain:
  image_encoder: cnn-small
  text_encoder: hash-bow
  image_size: 32
  epochs: 2
  batch_size: 16
  queue_size: 64
  dim: 16
  nested_dims: [8, 16]
  hidden: 32
  warmup_steps: 2
embed:
  threads: 1
ctr:
  seeds: 1
  strategies: [id, simtier, make]
  make_epochs: 1
  curve: []
  threads: 1
  model:
    emb_dim: 4
    att_hidden: [8]
    mlp_hidden: [8]
    n_tiers: 4
    make: {proj_dim: 4, att_hidden: [8], mlp_hidden: [8, 8, 4]}
  train: {batch_size: 64}
"""


def jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 32)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")
    return path


def public_fixtures(dst: Path) -> Path:
    """A copy of tests/fixtures with the photos the formats keep outside their tables: H&M's
    ``images/0xx/0xxxxxxxxx.jpg`` (one article left without) and Amazon's downloaded image files."""
    shutil.copytree(FIXTURES, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__", "fashion"))
    with open(dst / "hm" / "articles.csv", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i != 5:
                a = row["article_id"]
                jpeg(dst / "hm" / "images" / a[:3] / f"{a}.jpg", (i * 15 % 255, 80, 200))
    for i, line in enumerate(open(dst / "amazon" / "meta_All_Beauty.jsonl")):
        m = json.loads(line)
        if m["images"]:
            jpeg(dst / "amazon" / "images" / m["images"][0]["large"].rsplit("/", 1)[-1], (200, i * 15 % 255, 50))
    return dst


def preset_args(fx: Path) -> dict[str, dict[str, Path]]:
    """Keyword arguments of import_data for each preset's fixture."""
    return {
        "taobao": dict(events=fx / "taobao" / "UserBehavior.csv"),
        "ali-ccp": dict(events=fx / "ali-ccp"),
        "alimama": dict(events=fx / "alimama" / "raw_sample.csv"),
        "aliexpress": dict(events=fx / "aliexpress"),
        "amazon": dict(items=fx / "amazon" / "meta_All_Beauty.jsonl", events=fx / "amazon" / "All_Beauty.jsonl",
                       images=fx / "amazon" / "images"),
        "hm": dict(items=fx / "hm" / "articles.csv", events=fx / "hm" / "transactions_train.csv"),
        "mmrec": dict(events=fx / "mmrec" / "baby"),
        "mmctr": dict(events=fx / "mmctr"),
    }


def run_mmrank(*args: str) -> subprocess.CompletedProcess:
    """`mmrank ARGS` in a fresh process (the real entry point: exit codes, one-line errors)."""
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "mmrank.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to show a directory did not change)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}

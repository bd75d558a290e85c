"""Past one machine: torchrun (2 ranks, gloo) vs 1 process, and kill -9 mid-epoch + resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmrank.testing.markets import micro_market

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _config(path: Path, **over) -> Path:
    cfg = dict(image_encoder="cnn-small", text_encoder="hash-bow", epochs=4, batch_size=64,
               queue_size=512, dim=32, nested_dims=[8, 32], hidden=64, variant="scl")
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(run: Path) -> dict:
    return json.loads((run / "encoder" / "metrics.json").read_text())


def _copy_market(src: Path, dst: Path) -> Path:
    (dst / "data").mkdir(parents=True)
    for f in ("items.parquet", "pairs.parquet", "query_images.parquet"):
        shutil.copy2(src / "data" / f, dst / "data" / f)
    return dst


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return micro_market(tmp_path_factory.mktemp("dist") / "base")


def test_torchrun_two_ranks_matches_one_process(market, tmp_path):
    cfg = _config(tmp_path / "cfg.yaml")
    one, two = _copy_market(market, tmp_path / "one"), _copy_market(market, tmp_path / "two")
    args = ["pretrain", "--config", str(cfg)]
    subprocess.run([sys.executable, "-m", "mmrank.cli", *args, "--run", str(one)], check=True,
                   env=ENV, timeout=600, capture_output=True)
    # "--" ends torchrun's own options (it would read --run as an abbreviation of --run-path)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "mmrank.cli", "--", *args, "--run", str(two)],
                         env=ENV, timeout=600, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    m1, m2 = _metrics(one), _metrics(two)
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    for mod in ("image", "text"):
        assert abs(m1["acc@1"][mod] - m2["acc@1"][mod]) <= 0.02, (m1, m2)
    # one checkpoint, written by rank 0 only, no temp files left behind
    ck = two / "pretrain" / "ckpt" / "scl"
    assert sorted(p.name for p in ck.iterdir()) == ["last.safetensors"]


def test_killed_mid_epoch_resumes_to_the_same_result(market, tmp_path):
    # cnn-small trained end to end (BatchNorm, queue, triplet): slow enough steps to kill mid-epoch
    cfg = _config(tmp_path / "cfg.yaml", trainable_blocks=4, epochs=2, batch_size=32,
                  checkpoint_every=2)
    full, killed = _copy_market(market, tmp_path / "full"), _copy_market(market, tmp_path / "killed")
    cmd = [sys.executable, "-m", "mmrank.cli", "pretrain", "--config", str(cfg), "--run"]
    subprocess.run([*cmd, str(full)], check=True, env=ENV, timeout=900, capture_output=True)

    ckpt = killed / "pretrain" / "ckpt" / "scl" / "last.safetensors"
    proc = subprocess.Popen([*cmd, str(killed)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint appeared before the kill"
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        step_at_kill = int(f.metadata()["step"])
    total = json.loads((full / "encoder" / "metrics.json").read_text())
    assert not (killed / "encoder").exists(), "the run finished before it was killed"
    res = subprocess.run([*cmd, str(killed)], env=ENV, timeout=900, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"at step {step_at_kill}/" in res.stdout
    resumed = _metrics(killed)
    for n in ("acc@1", "acc@5"):
        for mod in ("image", "text"):
            assert abs(resumed[n][mod] - total[n][mod]) <= 0.01, (resumed, total)

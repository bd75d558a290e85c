"""`mmrank ctr follow --source redis` (issue 31): the near-line trainer reads the run's event stream from
Redis through the online joiner, is killed (SIGKILL) after a checkpoint mid-stream, restarts, and every
sample is trained exactly once, the samples being those of the replay join. Needs redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from safetensors.numpy import load_file

import mmrank
from mmrank.ctr.data import load_samples
from mmrank.ctr.follow import samples_from_arrow
from mmrank.stream.joiner import SAMPLE_SCHEMA
from mmrank.stream.sources import ReplaySource, produce
from mmrank.stream.stage import make_joiner

redis = pytest.importorskip("redis", reason="redis-py not installed (pip install 'mmrank[redis]')")
pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmrank.testing.markets import micro_market

    return micro_market(tmp_path_factory.mktemp("follow_redis") / "run", seed=3)



def _replay_join(run: Path, limit: int | None = None) -> pa.Table:
    """The joiner over the replay of the run's first ``limit`` events (all: None), flushed at the end."""
    records = [r for b in ReplaySource(run) for r in b.records][:limit]
    j = make_joiner(run)
    return pa.Table.from_batches([j.push(records[i:i + 4096]) for i in range(0, len(records), 4096)] + [j.flush()],
                                 schema=SAMPLE_SCHEMA)


def test_joined_samples_convert_to_the_batch_samples(micro_run: Path) -> None:
    """The conversion of the joiner's rows is the batch samples file, row for row, histories included."""
    joined = _replay_join(micro_run)
    s, ids = samples_from_arrow(joined.combine_chunks().to_batches()[0])
    batch = load_samples(micro_run / "data" / "ctr_samples.parquet", require_split=False)
    assert len(s) == len(batch) > 1000 and len(np.unique(ids)) == len(ids)
    for f in ("ts", "user_id", "item_id", "request_id", "position", "region", "category_id", "label", "is_train",
              "hist_offsets", "hist_item_id", "hist_category_id"):
        assert np.array_equal(getattr(s, f), getattr(batch, f)), f


def _follow(run: Path, url: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(mmrank.__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", "from mmrank.cli import app; app()", "ctr", "follow", "--run", str(run), "--source", "redis", "--redis", url,
         "--stream", "ev", "--strategies", "id", "--batch-size", "256", "--batch-events", "1000",
         "--checkpoint-every", "1", "--idle-stop-s", "0.5", "--publish-every", "86400", "--threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trained_some(ckpt: Path) -> bool:
    try:
        return json.loads(ckpt.read_text())["cursor"]["samples"] > 0
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def _checkpoint(run: Path) -> tuple[dict, dict]:
    d = run / "ctr" / "follow"
    state = json.loads((d / "checkpoint.json").read_text())
    return state, load_file(str(d / state["file"]))


def test_killed_follower_resumes_every_sample_trained_once(micro_run: Path, redis_url: str, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(micro_run / "data", run / "data")
    info = produce(run, redis_url, "ev")   # the whole log: the first ~half is the burn-in (no samples)
    assert info["events"] > 20_000
    expected = _replay_join(run).column("event_id").to_numpy()
    ckpt = run / "ctr" / "follow" / "checkpoint.json"
    proc = _follow(run, redis_url)
    deadline = time.time() + 60
    while not _trained_some(ckpt):         # killed right after its first checkpoint holding samples
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint within 60 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    state, arrays = _checkpoint(run)
    done = state["cursor"]["samples"]
    assert 0 < done < len(expected), "killed after the end of the stream: not mid-stream"
    assert state["cursor"]["redis"]["last_id"] and "source.state" in arrays

    again = _follow(run, redis_url)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-3000:]
    assert json.loads(out[out.index("{"):])["samples"] == len(expected)
    state, arrays = _checkpoint(run)
    n = state["cursor"]["samples"]
    assert n == len(expected)
    # Every sample trained exactly once, and they are the replay join's samples, in its order.
    assert arrays["trained"][:n].tolist() == [1] * n
    assert np.array_equal(arrays["event_ids"][:n], expected)
    client = redis.Redis.from_url(redis_url)
    assert client.xpending("ev", "ctr-follow")["pending"] == 0
    assert client.xinfo_groups("ev")[0]["entries-read"] == info["events"]
    assert (run / "ctr" / "follow-id").is_symlink()


def test_redis_source_without_url_is_a_config_error(micro_run: Path) -> None:
    from mmrank.ctr.follow import FollowConfig, open_samples
    from mmrank.errors import ConfigError

    with pytest.raises(ConfigError, match="--source redis: give --redis URL"):
        open_samples(micro_run, "redis", FollowConfig(source="redis"))

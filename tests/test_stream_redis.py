"""Redis Streams: a producer, a consumer group, a consumer killed (SIGKILL) mid-stream and restarted;
every event is trained exactly once, counted by event id. Needs redis-server (skipped without it)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import mmrank
from mmrank.stream.joiner import SAMPLE_SCHEMA
from mmrank.stream.sources import ReplaySource, produce
from mmrank.stream.stage import make_joiner

redis = pytest.importorskip("redis", reason="redis-py not installed (pip install 'mmrank[redis]')")
pytestmark = pytest.mark.redis



# The trainer stand-in: read a batch, join it, "train" (record every event id and every sample's id),
# checkpoint (state + cursor, atomically), acknowledge. It can stop at a chosen batch, after the read or
# after the checkpoint (before the ack), and wait there to be killed.
CONSUMER = r'''
import os, pickle, sys, time
from pathlib import Path
from mmrank.stream.events import Event
from mmrank.stream.joiner import Joiner
from mmrank.stream.sources import RedisSource
from mmrank.stream.stage import make_joiner

run, url, stream, work, stop_at, stop_where = sys.argv[1:7]
work, stop_at = Path(work), int(stop_at)
ckpt = work / "ckpt.pkl"
state = pickle.loads(ckpt.read_bytes()) if ckpt.exists() else {"cursor": None, "trained": [], "samples": [], "joiner": None}
joiner = Joiner.restore(state["joiner"]) if state["joiner"] else make_joiner(run)
src = RedisSource(url, stream, group="trainers", consumer="c1", cursor=state["cursor"], batch_events=1000,
                  block_ms=200)

def checkpoint(cursor):
    state.update(cursor=cursor, joiner=joiner.snapshot())
    tmp = ckpt.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(state, f)
        f.flush(); os.fsync(f.fileno())
    os.replace(tmp, ckpt)

def wait_to_be_killed():
    (work / "stopped").write_text("1")
    while True:
        time.sleep(1)

n, idle = 0, None
with open(work / "delivered.log", "a") as log:
    while True:
        b = src.read()
        if b is None:
            idle = idle or time.time()
            if time.time() - idle > 1.0:
                break
            continue
        idle = None
        n += 1
        log.write("".join(f"{e.event_id}\n" for e in b.records if isinstance(e, Event))); log.flush()
        if n == stop_at and stop_where == "after_read":
            wait_to_be_killed()
        rb = joiner.push(b.records)
        state["trained"] += [e.event_id for e in b.records if isinstance(e, Event)]
        state["samples"] += rb.column("event_id").to_pylist()
        checkpoint(b.cursor)
        if n == stop_at and stop_where == "after_checkpoint":
            wait_to_be_killed()
        src.ack(b.cursor)
state["samples"] += joiner.flush().column("event_id").to_pylist()
checkpoint(src.cursor())
(work / "skipped").write_text(str(src.skipped))
'''


def _consumer(run: Path, url: str, stream: str, work: Path, stop_at: int = 0, where: str = "") -> subprocess.Popen:
    script = work / "consumer.py"
    script.write_text(CONSUMER)
    env = {**os.environ, "PYTHONPATH": str(Path(mmrank.__file__).resolve().parents[1])}
    (work / "stopped").unlink(missing_ok=True)
    return subprocess.Popen([sys.executable, str(script), str(run), url, stream, str(work), str(stop_at), where],
                            env=env)


def _kill_when_stopped(proc: subprocess.Popen, work: Path) -> None:
    deadline = time.time() + 60
    while not (work / "stopped").exists():
        assert proc.poll() is None, f"consumer exited with {proc.returncode} before its stop"
        assert time.time() < deadline, "consumer never reached its stop"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


N = 8000  # events put on the stream (the first N of the replay)


def _replay_join(run: Path, records: list) -> pa.Table:
    j = make_joiner(run)
    return pa.Table.from_batches([j.push(records[i:i + 4096]) for i in range(0, len(records), 4096)] + [j.flush()],
                                 schema=SAMPLE_SCHEMA)


def test_killed_consumer_resumes_every_event_trained_once(tiny_market: Path, redis_url: str, tmp_path: Path) -> None:
    stream = "mmrank:events:test"
    info = produce(tiny_market, redis_url, stream, limit=N)
    records = [r for b in ReplaySource(tiny_market) for r in b.records][:N]
    everything = [e.event_id for e in records]
    assert info["events"] == len(everything) == N
    work = tmp_path / "work"
    work.mkdir()
    # Killed after reading its 4th batch (nothing of it done), then after checkpointing its 3rd (not acked).
    _kill_when_stopped(_consumer(tiny_market, redis_url, stream, work, 4, "after_read"), work)
    _kill_when_stopped(_consumer(tiny_market, redis_url, stream, work, 3, "after_checkpoint"), work)
    last = _consumer(tiny_market, redis_url, stream, work)
    assert last.wait(timeout=120) == 0
    state = pickle.loads((work / "ckpt.pkl").read_bytes())
    # Every event trained exactly once, in the stream's order; every sample emitted once, as in replay.
    assert state["trained"] == everything
    assert state["samples"] == _replay_join(tiny_market, records).column("event_id").to_pylist()
    # Nothing left pending or undelivered; the killed batches were delivered twice: the first redone,
    # the second (already in the checkpoint) acknowledged and skipped.
    client = redis.Redis.from_url(redis_url)
    assert client.xpending(stream, "trainers")["pending"] == 0
    group = client.xinfo_groups(stream)[0]
    assert group.get("lag") in (0, None) and group["entries-read"] == len(everything)
    delivered = [int(x) for x in (work / "delivered.log").read_text().split()]
    assert sorted(set(delivered)) == sorted(everything)
    assert len(delivered) - len(everything) == 1000  # the batch read but not done, delivered again
    assert int((work / "skipped").read_text()) == 1000  # the batch done but not acked: skipped, not redone
    assert state["cursor"]["source"] == "redis" and json.dumps(state["cursor"])


def test_cli_produce_and_join_from_redis(tiny_market: Path, redis_url: str, tmp_path: Path) -> None:
    from mmrank.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["stream", "produce", "--run", str(tiny_market), "--redis", redis_url,
                              "--stream", "cli", "--limit", str(N)])
    assert res.exit_code == 0, res.output
    client = redis.Redis.from_url(redis_url)
    client.xadd("cli", {"id": "oops", "ts": "1", "type": "click"})  # malformed: counted, not fatal
    out = tmp_path / "samples.parquet"
    res = runner.invoke(app, ["stream", "join", "--run", str(tiny_market), "--source", "redis", "--redis",
                              redis_url, "--stream", "cli", "--out", str(out), "--quiet", "--idle-stop-s", "0.3"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout[res.stdout.index("{"):])
    assert stats["bad"] == {"malformed": 1} and stats["source"] == "redis"
    records = [r for b in ReplaySource(tiny_market) for r in b.records][:N]
    assert pq.read_table(out).equals(_replay_join(tiny_market, records))
    assert stats["read"] == N + 1
    assert client.xpending("cli", "mmrank")["pending"] == 0

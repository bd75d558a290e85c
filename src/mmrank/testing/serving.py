"""A small complete run for the server's tests and benchmark (seconds to build, no downloads).

A synthetic market, an encoder with small from-scratch towers (``cnn-small`` image, ``hash-bow``
text) trained for one epoch, the embedding table with its index, and CTR models. Every stage is the
real one; only the sizes are small. Not used by any stage.
"""

from __future__ import annotations

from pathlib import Path

SMALL_ENCODER = dict(variant="scl-no-triplet-no-moco", image_encoder="cnn-small", text_encoder="hash-bow",
                     image_size=32, dim=32, nested_dims=[32], hidden=32, epochs=1, batch_size=64)


def build_serving_run(run: str | Path, *, n_items: int = 300, n_users: int = 300,
                      n_impressions: int = 8000, strategies: tuple[str, ...] = ("id", "simtier"),
                      seed: int = 0) -> Path:
    """Write a run with data/, encoder/, embeddings/ and ctr/<strategy>/ for each of ``strategies``."""
    from mmrank.ctr.stage import train_strategy
    from mmrank.data.market import generate_market, market_config
    from mmrank.threads import limited

    run = Path(run)
    with limited(1):
        generate_market(market_config(size="tiny", seed=seed, n_items=n_items, n_users=n_users,
                                      n_impressions=n_impressions), run)
        new_encoder(run, seed=seed)
        for s in strategies:
            train_strategy(run, s, make_epochs=1, progress=False)
    return run


def new_encoder(run: str | Path, seed: int = 0) -> str:
    """Train the small encoder into ``R/encoder`` and embed the catalog with it (made CURRENT);
    returns the encoder version. Another ``seed`` gives another version."""
    from mmrank.pretrain.stage import pretrain
    from mmrank.pretrain.config import PretrainConfig
    from mmrank.store.stage import embed_catalog

    pretrain(run, PretrainConfig(**SMALL_ENCODER, seed=seed))
    embed_catalog(run, progress=False)
    return (Path(run) / "encoder" / "version.txt").read_text().strip()


def bomb_png(width: int = 13_000, height: int = 13_000) -> bytes:
    """A valid PNG that declares ``width`` x ``height`` 1-bit pixels, all black: a few tens of KB on the
    wire, seconds of CPU and hundreds of MB to decode (a decompression bomb, for the limit tests)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


# ---- real servers for tests and benchmarks ---------------------------------------------------------------
def route_client(run: str | Path, *routers):
    """An in-process FastAPI TestClient serving only ``routers`` over ``run`` (the server's state and
    error handlers, no model loading beyond what the routes do)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mmrank.serve import errors
    from mmrank.serve.config import Settings
    from mmrank.serve.state import ServerState

    app = FastAPI()
    app.state.mmrank = ServerState(Settings(run=Path(run)))
    errors.install(app)
    for r in routers:
        app.include_router(r)
    return TestClient(app)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``mmrank serve --run R --port P`` in a subprocess (127.0.0.1), ready once /healthz answers.

    Example::

        >>> with ServerProcess(run, api_key="k") as srv:                  # doctest: +SKIP
        ...     httpx.post(srv.url + "/v1/rank", json=...)
    """

    def __init__(self, run: str | Path, *, api_key: str | None = None, port: int | None = None,
                 extra_args: tuple[str, ...] = (), env: dict | None = None, timeout: float = 120.0,
                 threads: int = 1) -> None:
        self.run, self.api_key, self.port = Path(run), api_key, port or free_port()
        self.extra_args, self.env, self.timeout, self.threads = extra_args, env or {}, timeout, threads
        self.proc = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        import os
        import subprocess
        import sys
        import tempfile
        import time

        import httpx

        env = dict(os.environ)
        env.pop("MMRANK_API_KEY", None)
        if self.api_key is not None:
            env["MMRANK_API_KEY"] = self.api_key
        env["HF_HUB_OFFLINE"] = "1"
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(self.env)
        self._log = tempfile.NamedTemporaryFile(prefix="mmrank-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "mmrank.cli", "serve", "--run", str(self.run), "--port",
               str(self.port), "--threads", str(self.threads), *self.extra_args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).json().get("status") == "ok":
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer /healthz within {self.timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return Path(self._log.name).read_text()[-4000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        """SIGKILL: no shutdown hook runs (a crash)."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        try:
            Path(self._log.name).unlink()
        except OSError:
            pass


def redis_server(directory: str | Path, port: int | None = None):
    """Start a private redis-server on ``port`` (default: a free one), its data in ``directory`` (fsync
    on every write; a restart on the same port and directory finds every acknowledged write);
    returns ``(proc, url)``. Raises FileNotFoundError if redis-server is not installed."""
    import shutil
    import subprocess
    import time

    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server")
    port = port or free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                             "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            return proc, url
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def move_table_to_redis(run: str | Path, url: str, namespace: str = "mmrank") -> None:
    """Copy the run's CURRENT local table into Redis and make Redis the run's backend (STORE.json);
    the ANN index files stay where they are (they are per version, not per backend)."""
    import numpy as np

    from mmrank.store.backends import create_table, open_table
    from mmrank.store.table import set_store_config

    root = Path(run) / "embeddings"
    src = open_table(root, backend="local")
    ids = src.ids()
    vecs = src.get(ids)
    dst = create_table(root, version=src.version, dim=src.dim, encoder_name=src.encoder_name,
                       backend="redis", url=url, namespace=namespace)
    dst.put(np.asarray(ids), vecs, version=src.version)
    dst.publish()
    dst.close()
    src.close()
    set_store_config(root, "redis", url, namespace)

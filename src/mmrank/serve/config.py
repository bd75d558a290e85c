"""How one server process runs: :class:`Settings` (the CLI fills it from its flags; each uvicorn worker
reads it back from the environment with :meth:`Settings.from_env`).

Limits a server keeps by default (each one a flag of ``mmrank serve``):

* bodies over 16 MiB get 413; images over 8 MiB or whose header declares more than 25 megapixels get
  413 before any pixel is decoded (a product photo is well under 12 Mpx; the imaging library's own
  bomb limit is 179 Mpx);
* each endpoint that does real work (``/v1/rank``, ``/v1/search``, ``POST /v1/items``) runs a bounded
  number of requests at once with a bounded queue behind them; a request that cannot start in time to
  finish within the deadline (500 ms) gets 503 with ``Retry-After`` at once (the time a request
  waited before the app saw it, estimated from the event loop's lag, counts against its deadline);
* reads take no key and have no rate limit on loopback; on any other address every client (its read
  key, or its IP without one) gets a token bucket of 100 requests/s (burst 200), over it 429.

``device`` (``--device``, default auto: CUDA when present) is where the bundle's models run: the item
encoder, the CTR model and the re-ranker are moved there once at load, each batch's tensors are moved
there, and scores come back to the host for the JSON answer; ``bf16`` autocasts them on CUDA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field

from mmrank.config import StrictModel
from mmrank.device import DEVICE_PATTERN, HardwareConfig
from mmrank.errors import MMRankError

ENV = "MMRANK_SERVE_SETTINGS"          # the settings (keys excluded) as JSON, for the workers
ENV_KEY_FILE = "MMRANK_SERVE_API_KEY_FILE"
ENV_READ_KEY_FILE = "MMRANK_SERVE_READ_KEY_FILE"
SHED_ENDPOINTS = ("rank", "rerank", "search", "items")  # the endpoints with a bounded queue


class EndpointLimit(StrictModel):
    """``concurrency`` requests of one endpoint run at once; up to ``queue`` more wait for a slot."""

    concurrency: int = Field(ge=1)
    queue: int = Field(ge=0)


def _default_limits() -> dict[str, EndpointLimit]:
    # rank: requests are coalesced into batches (mmrank.serve.batching), so many run at once;
    # search and ingest each hold the encoder lock: a few at once is all the encoder can use.
    return {"rank": EndpointLimit(concurrency=32, queue=64),
            "rerank": EndpointLimit(concurrency=32, queue=64),
            "search": EndpointLimit(concurrency=4, queue=8),
            "items": EndpointLimit(concurrency=2, queue=4)}


class Settings(StrictModel):
    """One server process's settings. ``api_key`` guards writes; ``read_key`` (optional) guards reads."""

    run: Path
    strategy: str | None = None
    rerank_model: str | None = None   # R/rerank/<model> for /v1/rerank (None: the preferred one trained)
    api_key: str | None = Field(None, repr=False)
    read_key: str | None = Field(None, repr=False)
    max_body_bytes: int = Field(16 << 20, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)
    # Measured (benchmarks/serve_latency.py): one forward over k requests of 200 candidates x 50
    # behaviour items costs more per request as k grows past 4 (memory-bound attention tensors), so
    # a batch stops near 512 rows: large requests run one or two per forward, small ones coalesce.
    max_batch_rows: int = Field(512, ge=1)
    threads: int | None = Field(None, ge=1)     # torch threads (default: unchanged)
    device: str = Field("auto", pattern=DEVICE_PATTERN)  # where the models run (mmrank.device)
    bf16: bool = True                           # bf16 autocast on CUDA (never on the CPU)
    pin_memory: bool = True                     # batches copied to CUDA from pinned host memory
    forward_workers: int = Field(1, ge=1)       # forward threads, each with its own model copy
    batching: bool = True
    # hostile input: what an image may cost before a pixel is decoded
    max_image_bytes: int = Field(8 << 20, ge=1)
    max_image_pixels: int = Field(25_000_000, ge=1)
    # shedding: a request that cannot start in time to finish within deadline_ms gets 503 at once
    deadline_ms: float = Field(500.0, gt=0)
    limits: dict[str, EndpointLimit] = Field(default_factory=_default_limits)
    # a worker started while the shared item store (Redis) is down waits for it this long
    store_wait_s: float = Field(60.0, ge=0)
    # reads: a token bucket per client (read key, else IP); 0 = off
    rate_per_s: float = Field(0.0, ge=0)
    rate_burst: int = Field(200, ge=1)

    @property
    def hardware(self) -> HardwareConfig:
        """The settings' device and bf16 switch as the run config's ``hardware`` section."""
        return HardwareConfig(device=self.device, bf16=self.bf16, pin_memory=self.pin_memory)

    def limit(self, endpoint: str) -> EndpointLimit:
        return self.limits.get(endpoint) or _default_limits()[endpoint]

    def to_env(self) -> dict[str, str]:
        """The settings for the workers' environment (the keys are not written there)."""
        return {ENV: self.model_dump_json(exclude={"api_key", "read_key"})}

    @classmethod
    def from_env(cls) -> "Settings":
        """The settings ``mmrank serve`` wrote for its workers, with the write key from
        ``MMRANK_SERVE_API_KEY_FILE`` or ``MMRANK_API_KEY`` and the read key from
        ``MMRANK_SERVE_READ_KEY_FILE`` or ``MMRANK_READ_KEY``."""
        env = os.environ
        if ENV not in env:
            raise MMRankError("the server's settings are not set (start the server with `mmrank serve --run R`)")
        doc = json.loads(env[ENV])
        doc["api_key"] = read_key_file(env.get(ENV_KEY_FILE), "MMRANK_API_KEY")
        doc["read_key"] = read_key_file(env.get(ENV_READ_KEY_FILE), "MMRANK_READ_KEY")
        return cls.model_validate(doc)


def default_read_rate(host: str) -> float:
    """Reads per second per client when ``--rate`` is not given: none on loopback (the machine's own
    users), 100 on any other address."""
    import ipaddress

    if host == "localhost":
        return 0.0
    try:
        return 0.0 if ipaddress.ip_address(host).is_loopback else 100.0
    except ValueError:  # a host name other than localhost
        return 100.0


def read_key_file(path: str | Path | None, env_var: str = "MMRANK_API_KEY") -> str | None:
    """A key from a file (first line, stripped) if given, else the environment variable ``env_var``."""
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as err:
            raise MMRankError(f"{path}: cannot read the key file ({err.strerror})") from None
        if not key:
            raise MMRankError(f"{path}: the key file is empty")
        return key
    return os.environ.get(env_var) or None

"""`--device` on the smaller stages' commands (sid build, analyze, creative, stream): each takes it and
resolves it before any work, so ``--device cuda`` on this (CPU) machine fails at once with the one-line
DeviceError (exit 2 through ``mmrank.cli.main``: tests/test_device_flags.py and, in a separate process,
test_embed_device); with ``--device cpu`` they run as before (the creative selector: the same weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

NO_CUDA = not torch.cuda.is_available()

COMMANDS = [
    ["sid", "build"],
    ["analyze", "exchange-rate"],
    ["analyze", "scaling"],
    ["creative", "generate"],
    ["creative", "compare"],
    ["stream", "produce", "--redis", "redis://127.0.0.1:1/0"],
    ["stream", "join"],
]


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_device_cuda_fails_before_any_work(cmd: list[str], tmp_path: Path) -> None:
    from mmrank.cli import app
    from mmrank.device import DeviceError

    run = tmp_path / "no-such-run"  # not even a run: the device is checked first
    r = CliRunner().invoke(app, [*cmd, "--run", str(run), "--device", "cuda"])
    assert isinstance(r.exception, DeviceError), (r.output, r.exception)
    msg = str(r.exception)
    assert "\n" not in msg and msg.startswith("device cuda: this machine has no CUDA device")
    assert not run.exists()


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_device_flag_is_in_each_commands_help(cmd: list[str]) -> None:
    from mmrank.cli import app

    r = CliRunner().invoke(app, [*cmd[:2], "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--device" in r.output and "cuda:N" in r.output


def test_sid_build_on_cpu_runs(serving_run_copy: Path) -> None:
    from mmrank.cli import app

    r = CliRunner().invoke(app, ["sid", "build", "--run", str(serving_run_copy), "--levels", "2", "--codes",
                                 "8", "--niter", "2", "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "distinct codes" in r.output


def _selector_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    n, a = 400, 6
    attrs = rng.integers(0, 2, (n, a)).astype(np.float32)
    regions = rng.integers(0, 3, n)
    alt = rng.random((n, a)).astype(np.float32)
    cnt = rng.integers(0, 4, n).astype(np.float32)
    click = (rng.random(n) < 0.2).astype(np.float32)
    prop = rng.uniform(0.05, 1.0, n)
    return attrs, regions, alt, cnt, click, prop


def test_selector_fitted_on_cpu_has_the_default_weights() -> None:
    from mmrank.creative.config import CreativeConfig
    from mmrank.creative.selector import Selector

    cfg = CreativeConfig(epochs=2)
    a = Selector.fit(*_selector_inputs(), cfg, seed=3, n_regions=3)
    b = Selector.fit(*_selector_inputs(), cfg, seed=3, n_regions=3, device=torch.device("cpu"))
    assert a.b == b.b
    for x, y in ((a.w, b.w), (a.W, b.W), (a.v, b.v)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.gpu
def test_selector_fitted_on_cuda_agrees_with_cpu() -> None:
    from mmrank.creative.config import CreativeConfig
    from mmrank.creative.selector import Selector

    cfg = CreativeConfig(epochs=2)
    a = Selector.fit(*_selector_inputs(), cfg, seed=3, n_regions=3)
    b = Selector.fit(*_selector_inputs(), cfg, seed=3, n_regions=3, device=torch.device("cuda"))
    # fp32 on both (no autocast) from the same draws; only the order of the GPU's sums differs
    np.testing.assert_allclose(b.W, a.W, atol=1e-3)
    np.testing.assert_allclose(b.w, a.w, atol=1e-3)

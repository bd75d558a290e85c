"""The hardware section: device resolution, the one-line error for a CUDA device the machine lacks,
autocast only on CUDA, and non-blocking moves."""

from __future__ import annotations

import pytest
import torch

from mmrank.device import (DeviceError, HardwareConfig, autocast, dist_backend, resolve_device,
                           to_device)
from mmrank.run_config import hardware_config
from mmrank.config import build
from mmrank.errors import ConfigError

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_cpu_resolve_to_this_machine() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device(None).type == want


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:3"])
def test_cuda_without_one_is_a_one_line_error(spec: str) -> None:
    with pytest.raises(DeviceError) as err:
        resolve_device(spec)
    msg = str(err.value)
    assert "\n" not in msg and "no CUDA device" in msg and "--device cpu" in msg


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cuda:"])
def test_unknown_spec_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError):
        resolve_device(spec)
    with pytest.raises(ConfigError, match="device"):
        build(HardwareConfig, {"device": spec}, "cfg.yaml: section 'hardware'")


def test_hardware_section_reads_file_then_flags(tmp_path) -> None:
    f = tmp_path / "cfg.yaml"
    f.write_text("hardware: {device: cpu, bf16: false}\n")
    assert hardware_config(f) == HardwareConfig(device="cpu", bf16=False)
    assert hardware_config(f, device="auto").device == "auto"
    assert hardware_config(None).device == "auto"


def test_cpu_never_autocasts_and_moves_are_identity() -> None:
    a = torch.randn(8, 8)
    with autocast(torch.device("cpu"), bf16=True):
        assert (a @ a).dtype == torch.float32
    assert to_device(a, torch.device("cpu")) is a
    assert dist_backend(torch.device("cpu")) == "gloo"
    assert dist_backend(torch.device("cuda", 0)) == "nccl"


@pytest.mark.gpu
def test_cuda_autocasts_bf16_and_moves_non_blocking() -> None:
    dev = resolve_device("cuda")
    a = to_device(torch.randn(64, 64), dev)
    assert a.device.type == "cuda"
    with autocast(dev, bf16=True):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(dev, bf16=False):
        assert (a @ a).dtype == torch.float32

"""Every command that runs a torch model takes --device, and --device cuda on a machine without CUDA
fails at once with one line (exit 2, through the entry point ``mmrank.cli.main``) before any work
(tests/test_embed_device.py checks the same in a separate process)."""

from __future__ import annotations

import pytest
import torch
import typer.main

from mmrank.cli import app

# The commands that run torch models (training, encoding, scoring); the others (market, config, data,
# report, stream, export) run none.
MODEL_COMMANDS = (
    "demo", "pretrain", "pretrain compare", "posttrain", "embed", "search", "serve",
    "ctr train", "ctr compare", "ctr predict", "ctr follow",
    "rerank train", "rerank compare", "rerank apply",
    "analyze exchange-rate", "analyze scaling", "sid build", "creative generate", "creative compare",
)


def _commands() -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(cmd: object, path: list[str]) -> None:
        out[" ".join(path)] = cmd
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


def test_every_model_command_takes_device() -> None:
    cmds = _commands()
    missing = [c for c in MODEL_COMMANDS if c not in cmds]
    assert not missing, f"commands gone: {missing}"
    lacking = [c for c in MODEL_COMMANDS
               if not any("--device" in p.opts for p in cmds[c].params)]  # type: ignore[attr-defined]
    assert lacking == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", [["demo"], ["pretrain"], ["pretrain", "compare"], ["embed"], ["ctr", "train"],
                                  ["rerank", "train"], ["serve"]], ids=lambda a: " ".join(a))
def test_device_cuda_without_one_is_one_line_exit_2(argv: list[str], tmp_path, monkeypatch,
                                                    capsys) -> None:
    from mmrank.cli import main

    run = tmp_path / "no-such-run"  # not even a run: the device is checked first
    monkeypatch.setattr("sys.argv", ["mmrank", *argv, "--run", str(run), "--device", "cuda"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: device cuda: this machine has no CUDA device")
    assert not run.exists()

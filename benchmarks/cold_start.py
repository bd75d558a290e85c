"""The cold path, as a stranger meets it: `make install`, `make test` and `make demo` in a fresh clone
with empty caches, each phase timed, with the 15 slowest tests and the ceilings checked.

What "fresh" means here:

* a ``git clone`` of the repository's committed HEAD into a temporary directory (uncommitted changes
  are not in it: the script says so), with ``../shared`` beside it as a symlink to the real one;
* no ``.venv`` (``make install`` creates it), no ``runs/``;
* empty compile caches (``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR``) and empty home caches
  (``HOME`` and ``XDG_CACHE_HOME`` point at empty directories, so pip's wheel cache, Hugging Face's
  and torch's caches start empty); ``PYTHONPATH``, ``VIRTUAL_ENV`` and cache locations inherited from
  the caller are dropped;
* pip's settings are kept: what ``python3 -m pip config list`` shows before ``HOME`` moves (the index
  and find-links of this machine, which may live in ``~/.config/pip/pip.conf``) is passed on as
  ``PIP_*`` variables, so ``make install`` reaches the same package index.

The ceilings (issue 28): ``make test`` <= 10 min and ``make demo`` <= 4 min on 2 cores. The exit code
is 0 when every phase succeeded within its ceiling, 1 otherwise.

    python benchmarks/cold_start.py                       # about 10 minutes on 2 idle cores
    python benchmarks/cold_start.py --json /tmp/cs.json   # and write the figures for the docs:
    mmrank report docs --bench cold_start=/tmp/cs.json    # -> docs/benchmarks.md
    python benchmarks/cold_start.py --dry-run             # clone and environment only; `make -n` per phase
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("install", "test", "demo")
CEILINGS_S = {"test": 600.0, "demo": 240.0}
# Inherited variables that would reach outside the fresh clone or its empty caches.
DROP = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "HF_HOME", "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "PIP_CACHE_DIR",
        "SENTENCE_TRANSFORMERS_HOME", "MPLCONFIGDIR", "PYTEST_ADDOPTS")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)s\s+(call|setup|teardown)\s+(\S.*?)\s*$")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def pip_settings(python: str = "python3") -> dict[str, str]:
    """``PIP_*`` variables for every setting ``pip config list`` shows now (files under HOME included).

    ``global.extra-index-url='a b'`` becomes ``PIP_EXTRA_INDEX_URL='a b'``; a setting the environment
    already gives (``:env:``) is kept as it is.
    """
    try:
        out = subprocess.run([python, "-m", "pip", "config", "list"], check=True, capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        print(f"warning: `{python} -m pip config list` failed ({err}); pip keeps only its PIP_* variables")
        return {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"^([a-z0-9_-]+|:env:)\.([a-z0-9_-]+)='(.*)'$", line.strip())
        if not m or m.group(1) == ":env:":
            continue
        env.setdefault("PIP_" + m.group(2).upper().replace("-", "_"), m.group(3))
    return env


def cold_env(base: Path, python: str = "python3") -> dict[str, str]:
    """The environment of every phase: the caller's, less :data:`DROP`, with empty caches and HOME."""
    pip = pip_settings(python)                      # read before HOME moves
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    for k, v in pip.items():
        env.setdefault(k, v)
    dirs = {"HOME": base / "home", "XDG_CACHE_HOME": base / "home" / ".cache",
            "TORCHINDUCTOR_CACHE_DIR": base / "inductor-cache", "TRITON_CACHE_DIR": base / "triton-cache"}
    for k, d in dirs.items():
        d.mkdir(parents=True, exist_ok=True)
        env[k] = str(d)
    return env


def fresh_clone(repo: Path, base: Path) -> tuple[Path, str]:
    """``base/mmrank``: a clone of ``repo``'s HEAD, with ``base/shared`` -> ``repo/../shared``."""
    sha = git(repo, "rev-parse", "HEAD")
    if git(repo, "status", "--porcelain", "--untracked-files=no"):
        print(f"note: {repo} has uncommitted changes; the clone has HEAD ({sha[:10]}) only")
    dest = base / "mmrank"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", git(repo, "rev-parse", "--path-format=absolute",
                                                                        "--git-common-dir"), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", sha], check=True)
    shared = (repo / ".." / "shared").resolve()
    if shared.exists():
        (base / "shared").symlink_to(shared, target_is_directory=True)
    else:
        print(f"note: {shared} does not exist; the tests that need it will skip")
    return dest, sha


def run_phase(phase: str, clone: Path, env: dict[str, str], log: Path, dry_run: bool) -> dict:
    """``make PHASE`` in the clone, its output shown and kept in ``log``; wall time and return code."""
    cmd = ["make", "-n", phase] if dry_run else ["make", phase]
    print(f"\n=== {' '.join(cmd)} (in {clone})", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    ceiling = CEILINGS_S.get(phase)
    return {"phase": phase, "seconds": round(seconds, 1), "returncode": rc, "ceiling_s": ceiling,
            "within": None if ceiling is None or dry_run else seconds <= ceiling, "log": str(log)}


def slowest_tests(output: str, n: int = 15) -> list[dict]:
    """The rows of pytest's ``slowest N durations`` section (``--durations=N``), slowest first."""
    rows, inside = [], False
    for line in output.splitlines():
        if "slowest" in line and "durations" in line:
            inside = True
            continue
        if inside:
            m = _DURATION.match(line)
            if m:
                rows.append({"seconds": float(m.group(1)), "when": m.group(2), "test": m.group(3)})
            elif line.startswith("=") or (rows and not line.strip()):
                break
    return rows[:n]


def summary(phases: list[dict], slowest: list[dict]) -> str:
    lines = ["", "cold start: phase wall times", f"{'phase':8s} {'seconds':>9s} {'ceiling':>9s}  result"]
    for p in phases:
        ceiling = "-" if p["ceiling_s"] is None else f"{p['ceiling_s']:.0f}"
        verdict = ("FAILED (exit %d)" % p["returncode"]) if p["returncode"] else \
            {True: "ok, within the ceiling", False: "OVER THE CEILING", None: "ok"}[p["within"]]
        lines.append(f"{p['phase']:8s} {p['seconds']:9.1f} {ceiling:>9s}  {verdict}")
    if slowest:
        lines += ["", f"the {len(slowest)} slowest tests:"]
        lines += [f"{t['seconds']:8.2f}s {t['when']:8s} {t['test']}" for t in slowest]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the repository to clone (default: this one)")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated, in order (default: all)")
    ap.add_argument("--json", type=Path, help="write the figures here (for `mmrank report docs --bench`)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone and caches")
    ap.add_argument("--dry-run", action="store_true",
                    help="clone and set up the environment, then `make -n` each phase (runs nothing)")
    args = ap.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        print(f"error: --phases: unknown {unknown[0]!r}; expected some of {', '.join(PHASES)}", file=sys.stderr)
        return 2
    repo = Path(git(args.repo, "rev-parse", "--show-toplevel"))
    base = Path(tempfile.mkdtemp(prefix="mmrank-cold-"))
    try:
        env = cold_env(base)
        clone, sha = fresh_clone(repo, base)
        print(f"clone {clone} at {sha[:10]}; HOME={env['HOME']}; "
              f"pip settings carried: {', '.join(k for k in env if k.startswith('PIP_')) or 'none'}")
        done: list[dict] = []
        slowest: list[dict] = []
        for phase in phases:
            res = run_phase(phase, clone, env, base / f"{phase}.log", args.dry_run)
            done.append(res)
            if phase == "test":
                slowest = slowest_tests(Path(res["log"]).read_text())
            if res["returncode"] != 0:
                break
        print(summary(done, slowest))
        if args.json:
            record = {"commit": sha, "cpus": os.cpu_count(), "dry_run": args.dry_run,
                      "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "phases": [{k: v for k, v in p.items() if k != "log"} for p in done], "slowest": slowest}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=2) + "\n")
            print(f"wrote {args.json}")
        ok = len(done) == len(phases) and all(p["returncode"] == 0 and p["within"] is not False for p in done)
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

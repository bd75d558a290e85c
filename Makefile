# The two set-up commands: `make demo` and `make test`. Both work on a fresh machine.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.mmrank-installed
EXTRAS  := encoders,redis,serve,ray,export,test

.PHONY: demo test install bench docs clean gpu-check

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# torch first, pinned: the CPU build that lies on local disk. A range that admits a newer torch
# would pull a CUDA build of several GB.
$(STAMP): $(VPY) pyproject.toml
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/mmrank demo --run runs/demo --size small

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VPY) -m pytest -q -p no:cacheprovider --timeout 900 --durations=15

# The result tables of README.md and docs/: copy runs/demo's JSON (when it exists) and any runs named in
# DOCS_RUNS (e.g. DOCS_RUNS="--run default=runs/m7") to docs/results/, then render every page from there.
docs: $(STAMP)
	$(VENV)/bin/mmrank report docs $(if $(wildcard runs/demo/report/results.json),--run demo=runs/demo) $(DOCS_RUNS)

bench: $(STAMP)
	$(VPY) -m pip install -q -e ".[bench]"
	for b in $(filter-out benchmarks/cold_start.py benchmarks/gpu_check.py benchmarks/gpu_prepare.py,$(wildcard benchmarks/*.py)); do HF_HUB_OFFLINE=1 $(VPY) $$b || exit 1; done

# The prepared GPU check (docs/gpu.md): installs nothing; on the GPU machine install .whl/ first.
GPU_CHECK_ARGS ?= --device cuda
gpu-check:
	HF_HUB_OFFLINE=1 $(if $(wildcard $(VPY)),$(VPY),$(PY)) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf runs/ .pytest_cache build

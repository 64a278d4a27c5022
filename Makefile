# Two entry points do all set-up on a fresh machine with Python >= 3.10:
#   make demo   - creates .venv, installs focalkit, runs the main job
#   make test   - creates .venv, installs focalkit + test tools, runs lint and the test suite
#   make test-stacks - creates .venv-stacks (torch + torchvision + ultralytics), runs the
#                  integration tests against them (CI runs it after make test)
# torch is pinned here (not in the package) so a fresh machine takes the CPU build on disk
# instead of pulling a multi-GB CUDA build; the package itself declares torch>=2.3.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
BIN := $(VENV)/bin

# The integrations' stacks need torchvision, whose wheels are built for one torch build: the
# registry's torchvision 0.28.0 fails to import against the CPU-only torch 2.13.0 above, so
# they get their own environment (torch with its CUDA libraries, which also runs on a CPU).
STACKS_VENV ?= .venv-stacks
STACKS_PINS ?= torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190
STACKS_BIN := $(STACKS_VENV)/bin
# Ultralytics without network: no settings sync, downloads or fonts; settings in the venv
STACKS_ENV := YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$(abspath $(STACKS_VENV))/ultralytics-config

.PHONY: demo test lint bench figure clean stacks-env test-stacks bench-stacks

$(BIN)/.focalkit-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[all,dev]"
	touch $@

# The demo's set-up installs what the demo needs and nothing of the test tools; its real-image
# study reads NEON photographs from the deepforest wheel, which focalkit fetches with the
# venv's pip on first use and keeps in .cache/focalkit (FOCALKIT_DATA_DIR).
DEMO_DATA ?= $(abspath .cache/focalkit)

$(BIN)/.focalkit-demo-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

demo: $(BIN)/.focalkit-demo-installed
	FOCALKIT_DATA_DIR=$(DEMO_DATA) $(BIN)/focalkit demo $(ARGS)

figure: $(BIN)/.focalkit-installed
	$(BIN)/focalkit plot focal-curves $(ARGS)

lint: $(BIN)/.focalkit-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/focalkit

test: lint
	$(BIN)/python -m pytest -q -n 2 tests $(ARGS)

# test-stacks: the integration tests against the real torchvision and Ultralytics, in
# .venv-stacks (about 6 GB, 1.5 to 3 minutes to build from the registries and disk caches).
# FOCALKIT_REQUIRE_STACKS=1 turns "skip when a stack is absent" into a failure.
$(STACKS_BIN)/.focalkit-installed: pyproject.toml
	$(PYTHON) -m venv $(STACKS_VENV)
	$(STACKS_BIN)/pip install --quiet --upgrade pip
	$(STACKS_BIN)/pip install --quiet $(STACKS_PINS)
	$(STACKS_BIN)/pip install --quiet -e ".[torchvision,ultralytics]" "pycocotools>=2.0.7" "pytest>=8" "pytest-xdist>=3" "hypothesis>=6.100"
	touch $@

stacks-env: $(STACKS_BIN)/.focalkit-installed

test-stacks: $(STACKS_BIN)/.focalkit-installed
	$(STACKS_ENV) FOCALKIT_REQUIRE_STACKS=1 $(STACKS_BIN)/python -m pytest -q -n 2 tests/integrations tests/test_readme.py $(ARGS)

bench-stacks: $(STACKS_BIN)/.focalkit-installed
	$(STACKS_ENV) $(STACKS_BIN)/python benchmarks/bench_detection_losses.py --json benchmarks/results/detection_losses_cpu.json
	$(STACKS_BIN)/python benchmarks/render_readme.py

bench: $(BIN)/.focalkit-installed
	$(BIN)/python benchmarks/bench_focal_cpu.py --json benchmarks/results/focal_cpu.json
	$(BIN)/python benchmarks/bench_ghm_box.py --json benchmarks/results/ghm_box_cpu.json
	$(BIN)/python benchmarks/bench_iou_family.py --threads 1 --json benchmarks/results/iou_family_cpu.json
	$(BIN)/python benchmarks/render_readme.py

# clean: what set-up, builds and test runs leave behind (the egg-info of `pip install -e .`
# sits under src/); the demo's report directory is output, not clutter, and stays.
clean:
	rm -rf $(VENV) $(STACKS_VENV) .cache build dist src/*.egg-info *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

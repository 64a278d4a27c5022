# Two entry points do all set-up on a fresh machine with Python >= 3.10:
#   make demo   - creates .venv, installs focalkit, runs the main job
#   make test   - creates .venv, installs focalkit + test tools, runs lint and the test suite
# torch is pinned here (not in the package) so a fresh machine takes the CPU build on disk
# instead of pulling a multi-GB CUDA build; the package itself declares torch>=2.3.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint bench figure clean

$(BIN)/.focalkit-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[all,dev]"
	touch $@

demo: $(BIN)/.focalkit-installed
	$(BIN)/focalkit demo $(ARGS)

figure: $(BIN)/.focalkit-installed
	$(BIN)/focalkit plot focal-curves $(ARGS)

lint: $(BIN)/.focalkit-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/focalkit

test: lint
	$(BIN)/python -m pytest -q -n 2 tests $(ARGS)

bench: $(BIN)/.focalkit-installed
	$(BIN)/python benchmarks/bench_focal_cpu.py --json benchmarks/results/focal_cpu.json
	$(BIN)/python benchmarks/bench_ghm_box.py --json benchmarks/results/ghm_box_cpu.json
	$(BIN)/python benchmarks/bench_iou_family.py --threads 1 --json benchmarks/results/iou_family_cpu.json
	$(BIN)/python benchmarks/render_readme.py

# clean: what set-up, builds and test runs leave behind (the egg-info of `pip install -e .`
# sits under src/); the demo's report directory is output, not clutter, and stays.
clean:
	rm -rf $(VENV) build dist src/*.egg-info *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

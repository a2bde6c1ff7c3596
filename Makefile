# selab: the two commands are `make run` and `make test`; both set everything up themselves.
# Inside an active conda environment (other than base, e.g. `conda activate selab` after
# `conda env create -f environment.yml`) they use that environment's Python; otherwise they create
# and use .venv/. Either way selab is installed once, editable, with its [dev] extras.
PYTHON ?= python3
ifneq ($(and $(CONDA_PREFIX),$(filter-out base,$(CONDA_DEFAULT_ENV))),)
BIN    := $(CONDA_PREFIX)/bin
# in this checkout, so that a second clone installs itself into the same environment too
STAMP  := .cache/conda-$(notdir $(CONDA_PREFIX)).installed
NEW_ENV = { echo "no python in the active conda environment $(CONDA_PREFIX)" >&2; exit 2; }
else
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.selab-installed
NEW_ENV = $(PYTHON) -m venv $(VENV)
endif
PY     := $(BIN)/python
RUN_DIR ?= runs/$(shell date +%Y%m%d-%H%M%S)
CELL_TIMEOUT ?= 600

.PHONY: install run test test-python test-notebooks test-papermill test-browser test-docs docs bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(NEW_ENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)

# The main job: a papermill training run of the Structure-evolving LSTM on the built-in synthetic data,
# into its own run folder (about 1.5 min on a quiet 2-core CPU; docs/results.md has what it reaches). 0 selects selab's
# quick-run defaults (256 images, 3 evolving layers, 64 hidden); the notebook's own defaults are smaller
# still, for nbval.
RUN_PARAMS ?= -p num_images 0 -p val_images 0 -p num_layers 0 -p hidden_channels 0 -p epochs 30 -p image_size 96
run: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(PY) -m papermill -k python3 --log-output --execution-timeout 1800 notebooks/05_train.ipynb $(RUN_DIR)/train.ipynb \
	    -p out_dir $(RUN_DIR) $(RUN_PARAMS)
	@echo "run folder: $(RUN_DIR) (executed notebook train.ipynb, metrics.json, metrics.csv, checkpoints/, figures/)"

# Every test: notebooks committed without outputs, pytest, nbval over notebooks/, one papermill run
# of 05_train with non-default parameters, the documentation site with warnings as errors, then the
# JupyterLab browser tests.
test: $(STAMP)
	git ls-files -z '*.ipynb' | xargs -0 -r $(BIN)/nbstripout --verify
	$(MAKE) test-python test-notebooks test-papermill test-docs test-browser

test-python: $(STAMP)
	$(PY) -m pytest -m "not browser" tests
	$(PY) -m pytest -p no:cacheprovider --doctest-modules selab

test-notebooks: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) notebooks/

test-papermill: $(STAMP)
	@rm -rf runs/test-papermill && mkdir -p runs/test-papermill  # a scratch run, new every time
	$(PY) -m papermill -k python3 --execution-timeout $(CELL_TIMEOUT) notebooks/05_train.ipynb runs/test-papermill/train.ipynb \
	    -p variant graph_lstm -p epochs 1 -p num_images 12 -p seed 1 -p out_dir runs/test-papermill

test-browser: $(STAMP)
	bash tests/browser/ensure_chromium.sh
	$(PY) -m pytest -m browser tests/browser

# The documentation site (docs/): API reference from the docstrings, the method, data and results pages,
# the notebooks executed on their defaults (cached in docs/_build/.jupyter_cache); offline.
# Open docs/_build/html/index.html.
docs: $(STAMP)
	$(PY) -m sphinx -b html docs docs/_build/html

# The same build with every warning an error (a docstring that does not render, a broken reference).
test-docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache .hypothesis bench/results docs/_build docs/api docs/notebooks

# One target per thing a person does. Each sets up .venv on first use and reuses it after.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCRATCH := $(CURDIR)/scratch

# The data root must be absolute: notebooks run with their own folder as working directory.
ifdef DDPM_DATA_DIR
export DDPM_DATA_DIR := $(abspath $(DDPM_DATA_DIR))
else
export DDPM_DATA_DIR := $(CURDIR)/data
endif

.PHONY: help install test unit unit-fast layers nbtest book live-runtime live-model execute mutants mutation-score train train-reference train-conditional lab lint clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## help: list the targets with what each does
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed -e 's/^## /  make /' -e 's/: /\t/' | expand -t 28

## install: the virtual environment in .venv with the package, the book's and the tests' dependencies
install: $(STAMP)

## test: the layers of the package, the unit tests, every chapter run in quick mode, and the book in Chromium
test: layers book unit nbtest

## unit: every unit test, the slow ones included
unit: $(STAMP)
	$(BIN)/python -m pytest tests

## unit-fast: the unit tests not marked slow, for the edit-test loop (under a minute)
unit-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not browser" -q

## layers: the package's import contracts (no cycles; the teaching core imports no machinery), from pyproject.toml
layers: $(STAMP)
	$(BIN)/lint-imports

nbtest: $(STAMP)
	rm -rf $(SCRATCH)
	DDPM_QUICK=1 DDPM_SCRATCH=$(SCRATCH) $(BIN)/python -m pytest --nbval-lax --nbval-sanitize-with book/nbval_sanitize.cfg \
		-p no:cacheprovider book/*.ipynb

## book: build the HTML book from the stored outputs (no notebook is re-executed), with the live panel's runtime
book: $(STAMP)
	$(BIN)/jupyter-book build . -W --keep-going --quiet
	@$(MAKE) --no-print-directory live-runtime
	@echo "The book is in _build/html/index.html"

# onnxruntime-web for the live panel, pinned by package-lock.json: ddpm_core.app.live copies the files the page loads.
NPM ?= npm
live-runtime:
	@if command -v $(NPM) >/dev/null 2>&1; then \
		[ node_modules/.package-lock.json -nt package-lock.json ] || $(NPM) ci --no-audit --no-fund --loglevel=error; \
		$(BIN)/python -m ddpm_core.app.live _build/html/_static node_modules/onnxruntime-web/dist >/dev/null; \
	else \
		rm -rf _build/html/_static/ort; \
		echo "make book: npm was not found, so the live panel's runtime (onnxruntime-web) was left out and chapters 5 and 8 say so in its place; install Node.js and npm (apt-get install nodejs npm) and run make book again."; \
	fi

## live-model: re-export the committed checkpoint for the live panel (ONNX, its schedule, x_T of seeds 0-31)
live-model: $(STAMP)
	$(BIN)/python -m ddpm_core export --checkpoint book/checkpoints/ddpm_mnist.safetensors \
		--out book/_static/live/model.onnx --seeds 32

## mutants: break the package's maths one small edit at a time (in a scratch copy) and report which test catches each
mutants: $(STAMP)
	$(BIN)/python -m tools.mutants

## mutation-score: mutmut's own generated mutants of the noise schedule and DDIM against their unit tests (~5 min)
MUTMUT_VERSION := 3.8.1
mutation-score: $(STAMP)
	$(BIN)/pip install --quiet "mutmut==$(MUTMUT_VERSION)"
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/python -m tools.mutation_score

## execute: re-run every chapter in full mode, every sample set generated again, and store the outputs (chapter 6's epoch sets need `make train`'s per-epoch checkpoints)
execute: $(STAMP)
	for nb in book/*.ipynb; do \
		DDPM_REGENERATE=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=-1 $$nb || exit 1; \
	done

## train: the book's run, 15 epochs on the 60,000 training images with the default recipe, a checkpoint per epoch
train: $(STAMP)
	$(BIN)/python -m ddpm_core train --epochs 15 --out runs/mnist-15ep --seed 0

## train-reference: the same budget with the reference run's recipe (Adam 2e-4, constant, uniform weights)
train-reference: $(STAMP)
	$(BIN)/python -m ddpm_core train --recipe reference --epochs 15 --out runs/reference-15ep --seed 0

## train-conditional: the book's recipe as a class-conditional network for classifier-free guidance (chapter 9)
train-conditional: $(STAMP)
	$(BIN)/python -m ddpm_core train --conditional --epochs 15 --out runs/mnist-cond-15ep --seed 0

## lab: Jupyter Lab on the book, with live timestep sliders
lab: $(STAMP)
	DDPM_LIVE_WIDGETS=1 $(BIN)/jupyter lab book/

## lint: ruff over the package, its tests, tools and benchmarks
lint: $(STAMP)
	$(BIN)/python -m ruff check ddpm_core tests tools benchmarks ablations

## clean: remove the built book and the scratch folders
clean:
	rm -rf _build $(SCRATCH) .pytest_cache mutants

# stecache — `make demo` runs the pipeline on embedded synthetic data, `make test` runs the tests.
# Both install everything they need into .venv from nothing (CPU torch first, see README).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
WORK    ?= work

.PHONY: install test test-fast lint demo ablation bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check stecache tests bench
	$(BIN)/ruff format --check stecache tests bench

# The whole pipeline on the embedded synthetic data, a couple of minutes on 2 CPU cores: synthesise
# clips, extract with the tiny VideoMAEv2 (random weights), train an STE head, evaluate, predict.
demo: $(STAMP)
	$(BIN)/stecache synth $(WORK)/synth
	$(BIN)/stecache extract --backbone videomaev2-tiny --data $(WORK)/synth --cache $(WORK)/cache-videomaev2-tiny.zarr
	$(BIN)/stecache info $(WORK)/cache-videomaev2-tiny.zarr
	$(BIN)/stecache train-head --head ste --depth 2 --cache $(WORK)/cache-videomaev2-tiny.zarr --lr 0.01 --runs $(WORK)/runs --name demo-ste-d2
	$(BIN)/stecache evaluate $(WORK)/runs/demo-ste-d2 --split test
	$(BIN)/stecache predict $(WORK)/runs/demo-ste-d2 $$(ls $(WORK)/synth/videos/*.mp4 | head -n 4)

# Tables I–III (3 seeds) on the synthetic data with the tiny backbones, or on CACHE="a.zarr b.zarr"
# (Table I on every cache, II/III on the first); writes reports/ablation.md. Recipe: pipelines/.
ablation: $(STAMP)
	BIN=$(BIN) WORK=$(WORK) CACHE="$(CACHE)" sh pipelines/ablation_synth.sh

bench: $(STAMP)
	$(BIN)/python -m bench

# GPU proof + timings in one budgeted process (bench/README.md): on a lent GPU machine, with .whl/ carried
# there (torch is in its image, zarr/PyAV come from the wheels); here, GPU_ARGS="--device cpu" runs it small.
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
bench-gpu:
	@$(GPU_PY) -c "import zarr, av" 2>/dev/null || \
		$(GPU_PY) -m pip install --quiet --no-index --no-deps --target .whl/site .whl/*.whl
	PYTHONPATH=$(CURDIR)/.whl/site:$(CURDIR) $(GPU_PY) -m bench.gpu $(GPU_ARGS)

clean:
	rm -rf $(VENV) $(WORK) runs reports

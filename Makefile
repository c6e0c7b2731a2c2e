# stecache — `make demo` runs the pipeline on embedded synthetic data, `make test` runs the tests.
# Both install everything they need into .venv from nothing (CPU torch first, see README).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
WORK    ?= work

# timm needs torchvision, and no torchvision on PyPI fits the CPU torch 2.13.0 (it would pull a CUDA
# torch): the timm tests run in their own venv with torch 2.14.1 + torchvision 0.29.1 (~6 GB, from disk).
VENV_TIMM ?= .venv-timm
TIMM_STAMP := $(VENV_TIMM)/.installed

.PHONY: install test test-fast test-timm lint demo ablation bench bench-gpu clean distclean

install: $(STAMP)

# pip shows its progress on the two long steps (torch, then stecache and its dependencies).
$(STAMP): pyproject.toml
	@echo "== creating $(VENV) and installing $(TORCH) (CPU build) and stecache; a few minutes from nothing"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on $(TORCH)
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)
	@echo "== $(VENV) ready"

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(MAKE) test-timm

# timm:<model> encoders against timm's own forward (tests/test_backbones_timm.py; fail, not skip, here).
test-timm: $(TIMM_STAMP)
	STECACHE_REQUIRE_TIMM=1 $(VENV_TIMM)/bin/python -m pytest -q tests/test_backbones_timm.py

$(TIMM_STAMP): pyproject.toml
	@echo "== creating $(VENV_TIMM) for the timm tests (torch 2.14.1 + torchvision 0.29.1 + timm)"
	$(PY) -m venv $(VENV_TIMM)
	$(VENV_TIMM)/bin/pip install --quiet --upgrade pip
	$(VENV_TIMM)/bin/pip install --progress-bar on torch==2.14.1 torchvision==0.29.1
	$(VENV_TIMM)/bin/pip install --progress-bar on -e '.[dev,timm]'
	touch $(TIMM_STAMP)

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

# Tables I, I+ (probes), II, III (3 seeds) on the synthetic data with the tiny backbones, or on
# CACHE="a.zarr b.zarr" (I and I+ on every cache, II/III on the first); writes runs/ablation-NAME and
# reports/ablation-NAME/{ablation.md,report.html}, NAME = synth or the caches' names. Recipe: pipelines/.
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

# clean: what the demo, ablation and tests wrote (keeps .venv); distclean: also the .venv (~1.6 GB).
clean:
	rm -rf $(WORK) runs reports

distclean: clean
	rm -rf $(VENV) $(VENV_TIMM)

# Two entry points on a fresh machine: `make demo` and `make test`. Both build their own .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check

.PHONY: install demo test lint bench clean wordnet gpu-check base reward0

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first (the CPU wheel, pinned in constraints.txt, not in pyproject), then everything else under the
# same constraint. No torchvision here: the project's image-only processor needs none (see docs/real_checkpoints.md).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e '.[test]'
	@$(MAKE) --no-print-directory wordnet
	touch $(STAMP)

install: $(STAMP)

# Real WordNet 3.0 from Debian's packages (no download at run time); skipped where it is already present.
wordnet:
	@if [ ! -f /usr/share/wordnet/data.noun ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1)) \
	     || echo "warning: could not install WordNet (apt-get install wordnet-base wordnet-sense-index)"; \
	  else echo "note: WordNet not found; install Debian's wordnet-base + wordnet-sense-index or run nltk.download('wordnet')"; fi; \
	fi

demo: $(STAMP)
	$(BIN)/python train.py

# Rebuild the tiny pretrained base the repository ships (src/medgr2/assets/base/; 15-50 min on 2 cores, by load), e.g.
# after a change of the default model/data/pretrain config; tests/test_shipped_base.py says when it is due.
base: $(STAMP)
	$(BIN)/python train.py stage=pretrain stage.ship=true logger=none print_config=false

# Rebuild R_φ^0 of the default config that the repository ships (src/medgr2/assets/reward/; 5-15 min on 2 cores, by
# load), after `make base` or a change of the default reward config; tests/test_shipped_reward.py says when it is due.
reward0: $(STAMP)
	$(BIN)/python train.py stage=reward +stage.ship=true logger=none print_config=false

# Two workers (pytest-xdist): most tests use one core, so the suite takes ~9 instead of ~16 minutes on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .

# TRL (the GRPO peer) is a benchmark-only extra, installed under the same torch constraint.
bench: $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python -m benchmarks.run_all

# One-shot GPU check (docs/gpu_check.md): pytest -m gpu + the full-size Qwen2.5-VL-3B architecture (random weights);
# JSON + markdown in $$OUT or benchmarks/results/gpu/. DRY=1: the same script on CPU with the tiny model (< 1 min).
# GPU_PY: the interpreter of an environment with CUDA torch (and vLLM); not the CPU .venv.
GPU_PY ?= $(BIN)/python
gpu-check: $(if $(DRY),$(STAMP))
	$(GPU_PY) -m benchmarks.gpu_check $(if $(DRY),--dry)

clean:
	rm -rf $(VENV) outputs multirun mlruns mlflow.db .cache

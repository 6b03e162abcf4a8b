# The README's commands. Everything runs from .venv, created by `make install`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test bench bench-prefix bench-cuda catalogue clean

install: $(STAMP)

# torch/torchvision are pinned and installed with pip before the rest (see DEVELOPERS.md).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[worker,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m scripts.serve

demo: $(STAMP)
	$(BIN)/python -m scripts.demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.transfer

bench-prefix: $(STAMP)
	$(BIN)/python -m bench.prefix

bench-cuda: $(STAMP)
	$(BIN)/python -m bench.cuda

catalogue: $(STAMP)
	$(BIN)/python -m worker.engine.catalogue > models/catalogue.json

clean:
	rm -rf var

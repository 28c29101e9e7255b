# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
# The venv is built once; torch comes first, pinned to the CPU wheel that lies on disk, so that the
# package's torch range is already satisfied and pip never fetches a multi-GB CUDA build. The dnn
# extra carries the DNN workload's networks; facenet-pytorch (MTCNN weights) pins torch < 2.3, so
# it is installed apart, without its dependencies.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mlink-installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,dnn]'
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mlink demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/links.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

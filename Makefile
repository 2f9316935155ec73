# The README's two commands: `make demo` and `make test`. Each creates .venv
# if it is missing and installs what it needs (tensorflow-cpu; set
# TF_EXTRA=tf for the GPU-capable `tensorflow` wheel).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TF_EXTRA ?= cpu
STAMP  := $(VENV)/.installed-$(TF_EXTRA)

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test bench bench-quick accuracy sweep venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(TF_EXTRA),test,bench]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples

# The suite runs in four pytest calls (files by first letter), two workers
# each: every XLA program TensorFlow compiles keeps memory mappings for the
# life of the process, and a worker that ran half the suite reached Linux's
# default vm.max_map_count (65530) and crashed inside TensorFlow (segfault or
# abort, in whichever jit-compiled test came next). With test_[a-f] in one
# call a worker still reached 49,000 mappings; the other calls stay near 15,000.
# test_contract.py alone compiles enough XLA programs (31 ops, four dtypes,
# three modes) to take a worker past the limit (it crashed with erfinv and
# ndtri added), and spreading its tests over two workers does not help (both
# compile every op's programs): it runs as three processes of a third of the
# ops each (SAFEOPS_CONTRACT_SHARD, see the file), two workers apiece.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/test_[ab]*.py tests/test_check_numerics.py
	SAFEOPS_CONTRACT_SHARD=0/3 $(BIN)/python -m pytest -n 2 --dist load tests/test_contract.py
	SAFEOPS_CONTRACT_SHARD=1/3 $(BIN)/python -m pytest -n 2 --dist load tests/test_contract.py
	SAFEOPS_CONTRACT_SHARD=2/3 $(BIN)/python -m pytest -n 2 --dist load tests/test_contract.py
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/test_[d-f]*.py
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/test_[g-l]*.py
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/test_[m-z]*.py
	$(BIN)/python -m pytest -q --doctest-modules safeops

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

accuracy: $(STAMP)
	$(BIN)/python -m benchmarks.accuracy

sweep: $(STAMP)
	$(BIN)/python -m benchmarks.sweep --gradients

clean:
	rm -rf $(VENV) build dist *.egg-info .hypothesis .pytest_cache

# Two commands do all set-up on a fresh machine (see README):
#   make demo   install into .venv, fetch the sample photos, train + export + evaluate the quick x3 SR preset
#   make test   install into .venv (with test extras) and run the test suite
# Also: make bench (benchmark suite, BENCHMARKS.md), make bench-quick, make builtin (retrain the shipped models).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUN    ?= runs/quick-sr

.PHONY: demo test bench bench-quick builtin samples venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "quantir needs Python 3.11 (the torch 2.13 CPU wheel is cp311); set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

samples: $(STAMP)
	$(VENV)/bin/quantir data fetch samples --out data/samples

demo: samples
	$(VENV)/bin/quantir train configs/sr_x3_mobileone_quick.yaml --out $(RUN)

# One pytest worker per core (pytest-xdist), whole test files per worker so module fixtures are built
# once, one torch thread per worker: the suite is mostly small ops that two torch threads barely
# speed up (one process used 1.14 cores on 2). On a clean clone on 2 cores (2026-12-06): 297 s, against
# 508 s for TEST_WORKERS=0, which runs it in one process with two threads.
TEST_WORKERS ?= 2
test: $(STAMP)
	QUANTIR_TEST_THREADS=$(if $(filter 0,$(TEST_WORKERS)),2,1) $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: samples
	$(PY) benchmarks/run_all.py

bench-quick: samples
	$(PY) benchmarks/run_all.py --quick

builtin: samples
	$(VENV)/bin/quantir data fetch samples --out data/samples --sets train train-ext eval stress stress-val
	$(PY) scripts/build_builtin_models.py

clean:
	rm -rf $(VENV) runs

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

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: samples
	$(PY) benchmarks/run_all.py

bench-quick: samples
	$(PY) benchmarks/run_all.py --quick

builtin: samples
	$(VENV)/bin/quantir data fetch samples --out data/samples --sets train train-ext eval stress stress-val
	$(PY) scripts/build_builtin_models.py

clean:
	rm -rf $(VENV) runs

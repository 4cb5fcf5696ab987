# make demo   set up (first time only) and run the whole pipeline on the embedded default: generate -> judge -> CSVs
# make test   set up (first time only) and run the test suite
# make test-fast  set up (first time only) and run the fast tests: no real model, no whole stage (-m "not slow", ~1 min)
# make bench  speed benchmarks (the generate stage's decoding vs one prompt at a time)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN_ID ?= demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test test-fast bench clean-venv
setup:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(PY) -m pipeline stage=generate run_id=$(RUN_ID)
	$(PY) -m pipeline stage=judge run_id=$(RUN_ID)
	@echo; echo "Results: runs/$(RUN_ID)/judge/smollm2-135m/ (samples.csv, summary.csv, metrics.csv, figures)"
	@echo "Open in a browser: $(CURDIR)/runs/$(RUN_ID)/judge/smollm2-135m/report.html"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m pipeline.bench

clean-venv:
	rm -rf $(VENV)

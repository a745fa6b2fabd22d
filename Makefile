# Two commands a newcomer needs (see README.md):
#   make run    installs into .venv (once) and runs the quickstart sweep on embedded data
#   make test   installs into .venv (once) and runs the whole test suite
VENV     ?= .venv
PYTHON   ?= python3
PY       := $(VENV)/bin/python
REQ_HASH := $(shell sha1sum requirements.txt | cut -c1-12)
STAMP    := $(VENV)/.installed-$(REQ_HASH)
SPACE    ?= search_spaces/quickstart.yaml

.PHONY: install lint-imports run test test-fast dry-run-all clean bench bench-kd-step bench-sweep-amortisation bench-overhead bench-data-pipeline bench-augment bench-loss-steps bench-probe-sweep bench-sweep-gpu bench-compile-trial bench-fused-ops

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	$(PY) run_sweep.py $(SPACE) $(ARGS)

# The import contract (.importlinter) first: a layer violation fails fast, before the long suite.
lint-imports: install
	$(VENV)/bin/lint-imports --no-logo

test: install lint-imports
	$(PY) -X faulthandler -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

dry-run-all: install
	@for f in search_spaces/*.yaml; do $(PY) run_sweep.py $$f --dry-run > /dev/null && echo "ok  $$f" || exit 1; done

bench-kd-step: install
	$(PY) bench/kd_step.py $(ARGS)

bench-sweep-amortisation: install
	$(PY) bench/sweep_amortisation.py $(ARGS)

bench-overhead: install
	$(PY) bench/overhead.py $(ARGS)

bench-data-pipeline: install
	$(PY) bench/data_pipeline.py $(ARGS)

bench-augment: install
	$(PY) bench/augment.py $(ARGS)

bench-loss-steps: install
	$(PY) bench/loss_steps.py $(ARGS)

bench-probe-sweep: install
	$(PY) bench/probe_sweep.py $(ARGS)

bench-sweep-gpu: install
	$(PY) bench/sweep_gpu.py $(ARGS)

bench-compile-trial: install
	$(PY) bench/compile_trial.py $(ARGS)

bench-fused-ops: install
	$(PY) bench/fused_ops.py $(ARGS)

bench: bench-kd-step bench-sweep-amortisation bench-overhead bench-data-pipeline bench-augment bench-loss-steps

clean:
	rm -rf ray_results mlflow.db mlartifacts .pytest_cache test-artifacts

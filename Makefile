# Two commands a newcomer needs (see README.md):
#   make run    installs into .venv (once) and runs the quickstart sweep on embedded data
#   make test   installs into .venv (once) and runs the whole test suite
VENV     ?= .venv
PYTHON   ?= python3
PY       := $(VENV)/bin/python
REQ_HASH := $(shell sha1sum requirements.txt | cut -c1-12)
STAMP    := $(VENV)/.installed-$(REQ_HASH)
SPACE    ?= search_spaces/quickstart.yaml

.PHONY: install run test test-fast dry-run-all clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	$(PY) run_sweep.py $(SPACE) $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

dry-run-all: install
	@for f in search_spaces/*.yaml; do $(PY) run_sweep.py $$f --dry-run > /dev/null && echo "ok  $$f" || exit 1; done

clean:
	rm -rf ray_results mlflow.db mlartifacts .pytest_cache test-artifacts

# Two commands for a fresh machine: `make demo` (train + export on the bundled data) and
# `make test` (the whole test suite). Both set up .venv first.
VENV ?= .venv
PYTHON_BIN := $(VENV)/bin/python
JOB_DIR ?= jobs/intent

.PHONY: demo test test-quick bench-train bench-optimize clean

$(VENV)/.installed-test: pyproject.toml tools/bootstrap.sh
	tools/bootstrap.sh $(VENV) test
	touch $@

$(VENV)/.installed-bench: pyproject.toml tools/bootstrap.sh
	tools/bootstrap.sh $(VENV) test,bench
	touch $@ $(VENV)/.installed-test

demo: $(VENV)/.installed-test
	$(PYTHON_BIN) -m trainer.task --job-dir $(JOB_DIR)

test: $(VENV)/.installed-test
	$(PYTHON_BIN) -m pytest tests

# The tier for a quick check while developing: no test that trains or starts a process.
test-quick: $(VENV)/.installed-test
	$(PYTHON_BIN) -m pytest tests -m "not slow"

bench-train: $(VENV)/.installed-bench
	$(PYTHON_BIN) benchmarks/train_banking77.py

bench-optimize: $(VENV)/.installed-bench
	$(PYTHON_BIN) benchmarks/optimize_banking77.py

clean:
	rm -rf jobs

# The two set-up commands of the README.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) -m optimlab showdown --out showdown

test: $(VENV)/.installed-test
	@.ci/system-packages || echo "note: could not install chromium/postgresql; the tests that need them will be skipped"
	KERAS_BACKEND=torch $(PY) -m pytest -q

bench: $(VENV)/.installed-test
	$(PY) bench/optim_step.py
	$(PY) bench/modern_step.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# The two commands a new user needs:  make demo  and  make test.
# Both create .venv on first use and reinstall only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# torch is pinned to the CPU build through constraints.txt (see the comment in that file).
INSTALL := $(PIP) install -c constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-base: $(BIN)/python pyproject.toml constraints.txt
	$(INSTALL) -e .
	@touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
	$(INSTALL) -e '.[test,all]'
	@touch $@

install: $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/privaudit demo --out demo-audit --force

# The report's browser tests drive Debian's chromium; .ci/ensure-chromium installs it when missing.
test: $(VENV)/.installed-test
	@bash .ci/ensure-chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

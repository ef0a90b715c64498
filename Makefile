# make quickstart   — create .venv if missing, install, run the whole pipeline on CPU
# make test         — same setup, then the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lam-installed
PIP := $(PY) -m pip install -qq --disable-pip-version-check

.PHONY: quickstart test test-all install clean-runs browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch first, pinned: the CPU wheel, so no dependency can pull a CUDA build
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	# envs/bfcl: installed without its dependencies, which pin numpy 1.26 and pull a CUDA torch (README, BFCL)
	$(PIP) --no-deps bfcl-eval==2026.3.23
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/lam pipeline --config configs/quickstart.yaml

# Headless Debian Chromium: eval's report.html renders in it, and Playwright (the [test] extra, no browser
# download) drives the web console and `lam view` in it. Tests skip with a printed reason where it cannot be installed.
browser: $(STAMP)
	-command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	-$(PY) -c "import playwright" 2>/dev/null || $(PIP) playwright==1.65.3

test: $(STAMP) browser
	$(PY) -m pytest -q -rs -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

clean-runs:
	rm -rf runs

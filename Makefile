# Two commands for a fresh machine: `make run` and `make test` (see README).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test test-fast e2e bench setup browser services screenshots clean

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[redis,test,e2e,bench]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(NODE_STAMP)

# Debian's Chromium for Playwright (never `playwright install`), redis-server for the Redis bus tests, and
# prometheus for promtool (rule checks and unit tests of deploy/prometheus; its service is not started).
browser:
	@command -v chromium >/dev/null && command -v redis-server >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium redis-server; }
	@command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

run: setup
	DASHBOARD_DEMO=$${DASHBOARD_DEMO:-1} DASHBOARD_DEMO_ACTIVITY=$${DASHBOARD_DEMO_ACTIVITY:-1} \
	  $(VENV)/bin/dashboard serve --host 127.0.0.1 --port $${PORT:-8000}

test: setup browser
	$(VENV)/bin/pytest tests e2e

test-fast: setup
	$(VENV)/bin/pytest tests

e2e: setup browser
	$(VENV)/bin/pytest e2e

bench: setup
	$(PY) -m bench

screenshots: setup browser
	$(PY) -m e2e.screenshots

clean:
	rm -rf $(VENV) node_modules var/*.db

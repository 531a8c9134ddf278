# Two commands for a fresh machine: `make run` and `make test` (see README).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test test-fast e2e bench setup browser services screenshots clean cluster

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[redis,test,e2e,bench]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(NODE_STAMP)

# Debian's Chromium for Playwright (never `playwright install`), redis-server for the Redis bus tests, PostgreSQL
# for the store contract and HAProxy for the cluster tests (the tests start their own servers on free ports).
browser:
	@command -v chromium >/dev/null && command -v redis-server >/dev/null && command -v haproxy >/dev/null && \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium redis-server postgresql haproxy; }

run: setup
	DASHBOARD_DEMO=$${DASHBOARD_DEMO:-1} DASHBOARD_DEMO_ACTIVITY=$${DASHBOARD_DEMO_ACTIVITY:-1} \
	  $(VENV)/bin/dashboard serve --host 127.0.0.1 --port $${PORT:-8000}

# PostgreSQL, redis-server (append-only), two `dashboard serve` nodes and HAProxy (deploy/haproxy.cfg) on
# http://127.0.0.1:$${PORT:-8000}/, demo data seeded once; Ctrl-C stops everything (docs/deploy.md).
cluster: setup browser
	$(PY) -m bench.cluster

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

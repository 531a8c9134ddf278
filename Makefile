# Two commands for a fresh machine: `make run` and `make test` (see README).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test test-fast e2e bench setup browser services screenshots clean lock cluster

setup: $(STAMP) $(NODE_STAMP)

# Python packages come from requirements.txt only: every one pinned, every file checked against its hash.
$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve requirements.txt from pyproject.toml (runtime deps, the extras above, the build backend), with hashes.
# Existing pins are kept unless `make lock LOCK_ARGS=--upgrade`.
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q pip-tools
	$(VENV)/bin/pip-compile -q --generate-hashes --allow-unsafe --all-build-deps --strip-extras \
	  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS) \
	  --extra redis --extra test --extra e2e --extra bench -o requirements.txt pyproject.toml

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(NODE_STAMP)

# Debian's Chromium for Playwright (never `playwright install`), redis-server for the Redis bus tests, PostgreSQL
# for the store contract and HAProxy for the cluster tests (the tests start their own servers on free ports), and
# prometheus for promtool (rule checks and unit tests of deploy/prometheus; its service is not started).
browser:
	@command -v chromium >/dev/null && command -v redis-server >/dev/null && command -v haproxy >/dev/null && \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium redis-server postgresql haproxy; }
	@command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

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

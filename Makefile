# `make dev` runs the whole service on its embedded defaults; `make test` runs the tests
# (SQLite, then PostgreSQL at 127.0.0.1:5432). Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: dev test test-sqlite test-postgresql lint chromium promtool haproxy oidc-provider

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/worksession dev

test: chromium promtool haproxy oidc-provider lint test-sqlite test-postgresql

# The web console's browser tests drive Debian's chromium (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq chromium)) || \
		echo "no /usr/bin/chromium: the web console tests will fail" >&2

# The Prometheus config, alert rules and their unit tests (deploy/prometheus) are checked by
# Debian's promtool (package prometheus; nothing downloaded). Without it those tests skip.
promtool:
	@test -x /usr/bin/promtool || (command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus)) || \
		echo "no /usr/bin/promtool: the alert rule checks will be skipped" >&2

# The Temporal-over-TLS test (tests/test_temporal_tls.py) puts Debian's haproxy in front of the
# dev server as a TLS-terminating proxy that requires client certificates. Without it the
# test skips.
haproxy:
	@test -x /usr/sbin/haproxy || (command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy)) || \
		echo "no /usr/sbin/haproxy: the Temporal TLS test will be skipped" >&2

# The console's sign-in browser test (tests/test_web_signatures.py) runs a real OpenID Connect
# provider, the npm package oidc-provider, installed from the committed lock file (npm ci:
# the same versions every time). Without it that test fails, saying how to install it.
OIDC_PROVIDER := tests/oidc_provider
oidc-provider: $(OIDC_PROVIDER)/node_modules/.package-lock.json

$(OIDC_PROVIDER)/node_modules/.package-lock.json: $(OIDC_PROVIDER)/package-lock.json
	cd $(OIDC_PROVIDER) && npm ci --no-audit --no-fund --loglevel=error

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test-sqlite: $(STAMP)
	WORKSESSION_TEST_DATABASE=sqlite $(VENV)/bin/pytest -q -p no:cacheprovider

test-postgresql: $(STAMP)
	WORKSESSION_TEST_DATABASE=postgresql $(VENV)/bin/pytest -q -p no:cacheprovider

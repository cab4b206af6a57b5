# The two commands a newcomer runs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: run test test-fast install install-test browser docker-engine bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test browser docker-engine

# Debian's chromium drives the real-browser test; Playwright never downloads a browser here.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install chromium' for the browser test"; fi; }

# Debian's docker.io (dockerd) and debootstrap (the local base image) let the Docker test build and run the image.
docker-engine:
	@test -x /usr/sbin/dockerd -a -x /usr/sbin/debootstrap || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq docker.io debootstrap >/dev/null; \
	  else echo "docker.io or debootstrap missing: run 'sudo apt-get install docker.io debootstrap' for the Docker test"; fi; }

run: install
	$(PY) app.py --host $(HOST) --port $(PORT)

test: install-test
	$(PY) -m pytest -q tests

# The tests that need no server, browser, Docker or training run: for working on the code.
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) -m cbam_viz bench

clean:
	rm -rf $(VENV) .pytest_cache

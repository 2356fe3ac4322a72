# shoplens: `make demo` runs the demo, `make test` runs ruff, mypy and pytest.
# Both set everything up first: .venv, torch, the package, and (demo) the dataset via apt.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP  := $(VENV)/.installed

.PHONY: setup java postgres data browser demo test lint typecheck unit eval report bench screenshots clean

setup: $(STAMP) java postgres

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: this exact pair is on the machine's disk and works with torchvision/timm/open_clip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[adapters,dev]"
	touch $(STAMP)

# Spark (`shoplens pipeline embed`) runs on Java: Debian's default JRE (17 on bookworm).
java: /usr/bin/java

/usr/bin/java:
	$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless

# PostgreSQL stores: the tests and benchmarks/bench_event_db.py start a throwaway server with
# Debian's `postgresql` binaries (/usr/lib/postgresql/N/bin); without them those tests skip.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

data: $(FMNIST)

$(FMNIST):
	# Debian package of Zalando Fashion-MNIST (MIT); without it shoplens downloads the
	# official files with sha256 checks.
	-$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

# Browser tests: Debian's Chromium (Playwright cannot download browsers here) and axe-core
# from npm.
browser: node_modules/axe-core/axe.min.js /usr/bin/chromium

/usr/bin/chromium:
	$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

node_modules/axe-core/axe.min.js: package.json
	npm install --no-audit --no-fund --silent
	touch $@

demo: setup data
	$(VENV)/bin/shoplens demo $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/ruff format --check src tests $(wildcard benchmarks)

typecheck: setup
	$(VENV)/bin/mypy

unit: setup browser
	$(VENV)/bin/pytest $(ARGS)

test: lint typecheck unit

eval: setup data
	$(VENV)/bin/shoplens eval $(ARGS)

report: setup
	$(VENV)/bin/shoplens report

bench: setup data
	$(VENV)/bin/shoplens bench run all

screenshots: setup browser
	$(PY) -m shoplens.serve.screenshots docs/screenshots

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build src/*.egg-info

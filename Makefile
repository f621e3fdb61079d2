# RoaD-RuNNer: every target creates or refreshes .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.roadrunner-installed
CF_STAMP := $(VENV)/.cf_cpp-installed
CF_SOURCES := $(shell find cf_cpp -path cf_cpp/build -prune -o -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.hpp' -o -name '*.txt' -o -name '*.toml' -o -name '*.py' -o -name '*.pyi' \) -print 2>/dev/null)
PROTOS := $(shell find protos -name '*.proto')
PYTEST := $(PY) -m pytest
BUF := .cache/buf/node_modules/.bin/buf
DOCTEST := /usr/include/doctest/doctest.h

.PHONY: setup proto lint-proto demo test test-slow test-all check bench eval eval-quick clean

setup: $(STAMP) $(CF_STAMP) proto

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[edge,zoo,dev]'
	touch $@

# cf_cpp builds with scikit-build-core + nanobind from the venv (no build isolation: rebuilds reuse cf_cpp/build).
$(CF_STAMP): $(CF_SOURCES) $(STAMP)
	$(PIP) install -q 'scikit-build-core>=0.10' 'nanobind>=2.0'
	$(PIP) install -q --no-build-isolation ./cf_cpp
	$(PIP) install -q -e '.[server]'
	touch $@

# The C++ unit tests use doctest (Debian package doctest-dev).
$(DOCTEST):
	apt-get install -y -q doctest-dev || (apt-get update -q && apt-get install -y -q doctest-dev)

proto: $(STAMP)
	$(PY) tools/gen_proto.py

# buf (npm package @bufbuild/buf) lints protos/ with the rules in protos/buf.yaml.
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .cache/buf @bufbuild/buf

lint-proto: $(BUF)
	cd protos && ../$(BUF) lint

demo: setup
	$(VENV)/bin/rr-edge demo

test: setup lint-proto $(DOCTEST)
	cf_cpp/run_ctest.sh
	cf_cpp/run_sanitized.sh $(PY)
	BUF=$(abspath $(BUF)) $(PYTEST) -m "not slow" -q

test-slow: setup
	$(PYTEST) -m slow -q

test-all: setup lint-proto $(DOCTEST)
	cf_cpp/run_ctest.sh
	cf_cpp/run_sanitized.sh $(PY)
	$(PYTEST) -q

PROTO_PY = rr_proto/codec.py rr_proto/framing.py rr_proto/allocator.py rr_proto/extras.py rr_proto/operators.py rr_proto/status.py rr_proto/transport.py rr_proto/providers.py rr_proto/argtypes.py rr_proto/limits.py  # hand-written

check: setup lint-proto
	$(VENV)/bin/ruff format --check rr_edge rr_server $(PROTO_PY) tools tests
	$(VENV)/bin/ruff check rr_edge rr_server $(PROTO_PY) tools tests
	$(VENV)/bin/mypy rr_edge rr_server $(PROTO_PY)

# Benchmarks (tools/, JSON on stdout; figures and how to read them in docs/performance.md).
bench: setup
	$(PY) -m tools.bench_blocks --repeat 5
	$(PY) -m tools.bench_planner --repeats 31
	$(PY) -m tools.bench_profiler
	$(PY) -m tools.bench_transport
	$(PY) -m tools.bench_server
	$(PY) -m tools.bench_upload
	$(PY) -m tools.plan_quality
	$(PIP) install -q scikit-surprise && $(PY) -m tools.bench_cf

# Evaluation on the emulated testbed (needs root): docs/results/ (full, about 35 min: docs/results/README.md) or docs/results/quick/ (< 10 min).
# The harness tears its testbed (prefix rre) down itself, also on SIGTERM and SIGHUP; after a crash it leaves, the next
# run refuses to start and names the `down` command (a fallback `down` here would also stop a second, running one).
eval: setup
	$(PY) -m tools.eval all

eval-quick: setup
	$(PY) -m tools.eval all --quick

clean:
	rm -rf $(VENV) cf_cpp/build build rr_proto/inference rr_proto/roadrunner

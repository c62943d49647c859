# sglang-mint: two commands.
#   make demo   real SGLang on CPU serving LoRA adapters by id (installs what it needs)
#   make test   the test suite (installs what it needs)
# and, while editing: make test-fast (the same suite less the tests that start SGLang servers)
#
# The virtualenv lives under $(MINT_CACHE_DIR), keyed by the hash of
# requirements.lock: a fresh machine gets a full install (about 4 minutes,
# 11 GB: sglang brings CUDA builds of torch and friends, which also run on
# CPU), later runs and other clones reuse it.

PYTHON ?= python3
MINT_CACHE_DIR ?= $(HOME)/.cache/sglang-mint
LOCK_HASH := $(shell sha256sum requirements.lock | cut -c1-16)
VENV := $(MINT_CACHE_DIR)/venv-$(LOCK_HASH)
# The editable install of this checkout, redone when setup.py or the checkout's path changes.
# (Build isolation stays on: without it setuptools would import the `kernels` package that
# sglang depends on, and this repository's kernels/ folder shadows it.)
EDITABLE_STAMP := $(VENV)/.editable-$(shell (cat setup.py; pwd) | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast

setup:
	@# The PostgreSQL catalog tests start Debian's server from /usr/lib/postgresql/*/bin (CI runs as root).
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "==> installing postgresql (catalog backend tests)"; \
		apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	fi
	@if [ ! -f "$(VENV)/.complete" ]; then \
		echo "==> building virtualenv $(VENV) from requirements.lock"; \
		rm -rf "$(VENV)" && \
		$(PYTHON) -m venv "$(VENV)" && \
		"$(VENV)/bin/pip" install --quiet --disable-pip-version-check -r requirements.lock && \
		touch "$(VENV)/.complete" || { rm -rf "$(VENV)"; exit 1; }; \
	fi
	@if [ ! -f "$(EDITABLE_STAMP)" ]; then \
		rm -f "$(VENV)"/.editable-* && \
		"$(VENV)/bin/pip" install --quiet --disable-pip-version-check --no-deps -e . && \
		touch "$(EDITABLE_STAMP)"; \
	fi

demo: setup
	"$(VENV)/bin/mint" demo

# Three lanes at once. Tests without SGLang servers run in FAST_WORKERS processes at the lowest CPU
# priority (nice 19), one file per process at a time (pytest-xdist; module fixtures are built once;
# most of their time is subprocesses and servers they wait on, so 4 beat 2 on two cores): they take
# what the servers leave. The server tests (pytest.mark.server) run in two halves side by side
# (tests/server_lanes.py): those on the four shared servers, and the modules that start their own.
# Each half runs one test at a time: a test mostly waits on one server, which keeps one core busy.
# Every lane always runs; the target fails if any failed (exit 5, nothing selected by PYTEST_ARGS,
# is not a failure).
FAST_WORKERS ?= 4

test: setup
	@fast=0; own=0; shared=0; \
	fast_log=$$(mktemp -t mint-fast-lane.XXXXXX); own_log=$$(mktemp -t mint-own-servers.XXXXXX); \
	echo "==> tests without SGLang servers: $(FAST_WORKERS) workers at nice 19, output in $$fast_log until they end"; \
	nice -n 19 "$(VENV)/bin/pytest" -q -m "not server" -n $(FAST_WORKERS) --dist loadfile $(PYTEST_ARGS) \
		>"$$fast_log" 2>&1 & fast_pid=$$!; \
	echo "==> tests with SGLang servers of their own, one at a time, output in $$own_log until they end"; \
	"$(VENV)/bin/pytest" -q -m server --server-lane own --durations=15 $(PYTEST_ARGS) >"$$own_log" 2>&1 & own_pid=$$!; \
	echo "==> tests on the shared SGLang servers, one at a time"; \
	"$(VENV)/bin/pytest" -q -m server --server-lane shared --durations=15 $(PYTEST_ARGS) || shared=$$?; \
	wait $$own_pid || own=$$?; \
	echo "==> tests with SGLang servers of their own (exit $$own)"; cat "$$own_log"; rm -f "$$own_log"; \
	wait $$fast_pid || fast=$$?; \
	echo "==> tests without SGLang servers (exit $$fast)"; cat "$$fast_log"; rm -f "$$fast_log"; \
	for rc in $$fast $$own $$shared; do [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit 1; done

# Everything but the tests that start SGLang servers: a few minutes, for the edit loop.
test-fast: setup
	"$(VENV)/bin/pytest" -q -m "not server" -n $(FAST_WORKERS) --dist loadfile $(PYTEST_ARGS)

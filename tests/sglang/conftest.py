"""End-to-end fixtures: real SGLang servers on CPU, the official openai client.

Servers that differ only in what a request can carry are shared by every module of a
test process:

- ``stock_server``: without --enable-mint, the tiny adapters from --lora-paths as PEFT
  folders and as packed files (``packed-<name>``);
- ``mint_server``: --enable-mint serving the tiny adapters from --lora-paths;
- ``shared_catalog_server``: --enable-mint serving ``shared_catalog``, into which each
  module publishes its own adapters under ids of its own (the catalog is read per
  request, so a publish while the server runs is served at once);
- ``small_budget_server``: the same for ``small_budget_catalog``, with a 2 MiB host budget,
  eight GPU slots and Prometheus metrics: for modules that churn adapters through memory.

A module whose claim depends on the server's flags or counters starts its own.

Each of these stops after the last test that uses it (``server_lanes.last_users``), not at the
end of the session: the server tests run in two halves at once (tests/server_lanes.py), and four
idle servers would hold 11 GB beside the other half's.
"""

from __future__ import annotations

import sys

import openai
import pytest
import server_lanes

from sglang_mint.dev.server import SGLangServer

_running: dict[str, SGLangServer] = {}  # the shared servers started: {fixture name: server}


def _shared(name: str, server: SGLangServer) -> SGLangServer:
    _running[name] = server
    return server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # after the test's own teardown, and its module's if it was the module's last
    for name in item.config.stash[server_lanes.LAST_USERS].get(item.nodeid, ()):
        server = _running.pop(name, None)
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def catalog_server():
    """``catalog_server(model, catalog, log_dir, *flags)``: a server with --enable-mint serving ``catalog``,
    not yet started (use it with ``with``)."""

    def make(model, catalog, log_dir, *extra_args: str) -> SGLangServer:
        return SGLangServer(model, enable_mint=True, extra_args=["--mint-catalog", str(catalog), *extra_args],
                            log_path=log_dir / "server.log", python=sys.executable)

    return make


@pytest.fixture(scope="session")
def packed_tiny_adapters(tiny_model, tiny_adapters, tmp_path_factory):
    """{name: folder holding adapter.mintpack} for each tiny adapter."""
    from sglang_mint.packed.convert import pack_folder

    root = tmp_path_factory.mktemp("packed")
    out = {}
    for name, src in tiny_adapters.items():
        pack_folder(str(src), str(root / name), base_dir=str(tiny_model))
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def stock_server(tiny_model, tiny_adapters, packed_tiny_adapters, tmp_path_factory):
    """Stock SGLang (the plugin loaded, no --enable-mint) serving the tiny adapters and their packed files."""
    paths = {**tiny_adapters, **{f"packed-{k}": v for k, v in packed_tiny_adapters.items()}}
    log = tmp_path_factory.mktemp("stock-server") / "server.log"
    with SGLangServer(tiny_model, lora_paths=paths, enable_mint=False, log_path=log, python=sys.executable) as s:
        yield _shared("stock_server", s)


@pytest.fixture(scope="session")
def mint_server(tiny_model, tiny_adapters, tmp_path_factory):
    """One real server with --enable-mint serving the tiny adapters from --lora-paths; /v1/responses
    stores answers (--enable-response-store), four at most, within 2 MiB, and makes two background ones at once
    (test_stored_responses.py); at most three sessions
    open, each closed after 4 s idle (test_sessions.py), each keeping 2048 tokens of its requests
    (test_session_history.py)."""
    log = tmp_path_factory.mktemp("mint-server") / "server.log"
    with SGLangServer(tiny_model, lora_paths=tiny_adapters, enable_mint=True, log_path=log,
                      extra_args=["--enable-response-store", "--enable-streaming-session", "--mint-max-sessions", "3",
                                  "--mint-session-timeout", "4", "--mint-session-history-tokens", "2048",
                                  "--mint-max-stored-responses", "4", "--mint-stored-responses-bytes", "2MiB",
                                  "--mint-max-background-responses", "2"],
                      python=sys.executable) as server:
        yield _shared("mint_server", server)


@pytest.fixture(scope="session")
def mint_client(mint_server):
    return openai.OpenAI(base_url=mint_server.openai_url, api_key="none", max_retries=0)


def empty_catalog(tiny_model, tmp_path_factory, name: str):
    """The root of a new, empty catalog for ``tiny_model``, in a temporary folder named ``name``."""
    from sglang_mint.catalog import init_catalog

    root = tmp_path_factory.mktemp(name) / "catalog"
    init_catalog(str(root), str(tiny_model)).close()
    return root


@pytest.fixture(scope="session")
def shared_catalog(tiny_model, tmp_path_factory):
    """The root of a catalog for ``tiny_model`` that modules publish into (each under its own ids)."""
    return empty_catalog(tiny_model, tmp_path_factory, "shared-catalog")


@pytest.fixture(scope="session")
def shared_catalog_server(tiny_model, shared_catalog, tmp_path_factory, catalog_server):
    """Answers report cached tokens (--enable-cache-report); its usage ledger is ``srv.usage_dir``;
    it refuses uploads over ``srv.max_upload_bytes`` (1 MiB, about eight tiny adapters)."""
    logs = tmp_path_factory.mktemp("shared-catalog-server")
    max_upload_bytes = 1 << 20
    with catalog_server(tiny_model, shared_catalog, logs, "--enable-cache-report",
                        "--mint-usage-dir", str(logs / "usage"),
                        "--mint-max-upload-bytes", str(max_upload_bytes)) as srv:
        srv.usage_dir, srv.max_upload_bytes = logs / "usage", max_upload_bytes
        yield _shared("shared_catalog_server", srv)


@pytest.fixture(scope="session")
def small_budget_catalog(tiny_model, tmp_path_factory):
    """The root of a catalog for ``tiny_model`` that churning modules publish into (each under its own ids)."""
    return empty_catalog(tiny_model, tmp_path_factory, "small-budget-catalog")


@pytest.fixture(scope="session")
def small_budget_server(tiny_model, small_budget_catalog, tmp_path_factory, catalog_server):
    """A host budget of ``srv.host_budget_bytes`` (2 MiB: about thirty rank-8 or two hundred rank-1 tiny
    adapters), eight GPU slots, --enable-metrics with one custom label a request may set (``tenant``), and 4 MiB
    for compiled grammars. Counters are shared: a module checks differences."""
    host_budget_bytes = 2 << 20
    with catalog_server(tiny_model, small_budget_catalog, tmp_path_factory.mktemp("small-budget-server"),
                        "--mint-host-cache-bytes", str(host_budget_bytes), "--enable-metrics",
                        "--tokenizer-metrics-allowed-custom-labels", "tenant", "--mint-grammar-cache-bytes", "4MiB",
                        "--max-loras-per-batch", "8") as srv:
        srv.host_budget_bytes = host_budget_bytes
        yield _shared("small_budget_server", srv)

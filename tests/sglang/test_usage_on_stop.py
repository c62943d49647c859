"""The usage ledger keeps the counts of the last answers when the server stops.

The ledger appends what it counted every 2 s, and a stop ended its scheduler between two appends:
the answers of those last seconds were served and never billed. Here the ledger appends once an
hour (MINT_USAGE_FLUSH_S), so every answer is counted after the last append, and all of them would
be lost. A server is stopped one of two ways, and each gets a real SGLang server on CPU
(--enable-mint, a catalog, a usage folder) that answers a few requests and is stopped at once:

- ``launcher``: SIGTERM to the launcher alone, as Kubernetes stops a container's first process.
  SGLang drains its requests, then sends every scheduler a ShutdownReq;
- ``group``: SIGTERM to every process of the server at once, as systemd stops a service and
  ``ManagedProcess.stop`` stops a test's server.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import openai
import pytest

from sglang_mint.catalog import init_catalog
from sglang_mint.dev.server import SGLangServer
from sglang_mint.usage.ledger import requests_by_adapter

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

ADAPTER = "bill/me"
N_REQUESTS = 6


@pytest.mark.parametrize("stopped", ["launcher", "group"])
def test_answers_just_before_a_stop_are_in_the_ledger(stopped, tiny_model, tiny_adapters, tmp_path):
    root = tmp_path / "catalog"
    with init_catalog(str(root), str(tiny_model)) as cat:
        cat.publish(ADAPTER, str(tiny_adapters["tiny-0001"]))
    usage = tmp_path / "usage"
    server = SGLangServer(tiny_model, extra_args=["--mint-catalog", str(root), "--mint-usage-dir", str(usage)],
                          env={"MINT_USAGE_FLUSH_S": "3600"}, log_path=tmp_path / "server.log", python=sys.executable)
    with server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=300)
        for _ in range(N_REQUESTS):
            assert client.completions.create(model=ADAPTER, prompt="hello", max_tokens=2).choices
        answered = time.time()
        if stopped == "launcher":
            os.kill(server.process.proc.pid, signal.SIGTERM)
            server.process.proc.wait(120)
        else:
            server.stop()
    stopped_after_s = time.time() - answered
    assert "usage_flush_s=3600.0" in server.process.log_text()  # the schedulers' ledgers appended once an hour
    assert requests_by_adapter(usage) == {ADAPTER: N_REQUESTS}, (stopped_after_s, server.process.log_tail())

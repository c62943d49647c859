"""End-to-end fixtures: real SGLang servers on CPU, the official openai client."""

from __future__ import annotations

import sys

import openai
import pytest

from sglang_mint.dev.server import SGLangServer


@pytest.fixture(scope="session")
def catalog_server():
    """``catalog_server(model, catalog, log_dir, *flags)``: a server with --enable-mint serving ``catalog``,
    not yet started (use it with ``with``)."""

    def make(model, catalog, log_dir, *extra_args: str) -> SGLangServer:
        return SGLangServer(model, enable_mint=True, extra_args=["--mint-catalog", str(catalog), *extra_args],
                            log_path=log_dir / "server.log", python=sys.executable)

    return make


@pytest.fixture(scope="session")
def mint_server(tiny_model, tiny_adapters, tmp_path_factory):
    """One real server with --enable-mint serving the tiny adapters from --lora-paths."""
    log = tmp_path_factory.mktemp("mint-server") / "server.log"
    with SGLangServer(tiny_model, lora_paths=tiny_adapters, enable_mint=True, log_path=log,
                      python=sys.executable) as server:
        yield server


@pytest.fixture(scope="session")
def mint_client(mint_server):
    return openai.OpenAI(base_url=mint_server.openai_url, api_key="none", max_retries=0)

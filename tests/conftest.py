"""Shared fixtures: the tiny model and adapters, built once per test session."""

from __future__ import annotations

import pytest

# Real servers on loopback, usable from every test folder: the S3-compatible moto server
# (fixtures ``moto_server``, ``s3_url``) and PostgreSQL (``postgres_server``, ``pg_url``).
# Each starts only when a test asks for one of its fixtures.
pytest_plugins = ["servers.moto_server", "servers.postgres_server"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from sglang_mint.dev.tiny import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory):
    """{adapter_id: folder} for three PEFT adapters of different ranks and targets."""
    from sglang_mint.dev.tiny import adapter_name, write_tiny_adapters

    paths = write_tiny_adapters(tiny_model, tmp_path_factory.mktemp("tiny-adapters"), count=3, seed=0)
    return {adapter_name(i): p for i, p in enumerate(paths)}

"""Shared fixtures: the tiny model and adapters, built once per test session."""

from __future__ import annotations

import os

# Triton kernels run under the Triton interpreter on a CPU machine (tests/kernels), which must be on
# before anything imports triton: triton.language's own @jit functions (tl.sum, tl.cdiv, ...) are
# decorated when triton is imported, and an interpreted kernel cannot call them if they were
# decorated without it. peft, transformers and sglang all import triton, and test modules collected
# before tests/kernels import them. MINT_KERNEL_TESTS_ON_GPU=1 on a GPU machine runs real kernels.
if os.environ.get("MINT_KERNEL_TESTS_ON_GPU") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

# One OpenMP thread in every test process and every server a test starts: a tiny model's ops are too
# small to split, and torch's idle OpenMP threads spin. 200 requests to one tiny server took 9.0-9.5
# CPU-seconds with two threads, 4.3-5.1 with one, in the same wall time, on two cores that three test
# lanes share (Makefile).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import server_lanes  # noqa: E402

# Real servers on loopback, usable from every test folder: the S3-compatible moto server
# (fixtures ``moto_server``, ``s3_url``) and PostgreSQL (``postgres_server``, ``pg_url``).
# Each starts only when a test asks for one of its fixtures.
pytest_plugins = ["servers.moto_server", "servers.postgres_server"]


# -- the two lanes: `make test` runs everything, `make test-fast` leaves out `server` tests ----------
_server_allowed = [True]


def pytest_configure(config):
    """A test that starts an SGLang server must say so (``pytest.mark.server``): in a run that leaves
    server tests out, starting one anyway fails, so the fast lane never grows a slow test unseen.
    And the code under test must be this checkout's (checkout.py)."""
    import sglang_mint
    from checkout import installed_elsewhere

    from sglang_mint.dev.server import SGLangServer

    wrong = installed_elsewhere(sglang_mint.__file__)
    if wrong:
        raise pytest.UsageError(wrong)

    start = SGLangServer.start

    def start_if_marked(self):
        if not _server_allowed[0]:
            raise RuntimeError("this test starts an SGLang server but is not marked pytest.mark.server; "
                               "mark it (make test-fast leaves server tests out)")
        return start(self)

    SGLangServer.start = start_if_marked


def pytest_addoption(parser):
    parser.addoption("--server-lane", choices=server_lanes.LANES, default=None,
                     help="run one half of the server tests (tests/server_lanes.py): make test runs both at once")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    lane = config.getoption("--server-lane")
    if lane is not None:
        kept, deselected = server_lanes.select(items, lane)
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    config.stash[server_lanes.LAST_USERS] = server_lanes.last_users(items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    # Module- and session-scoped servers start in the setup of the first test that needs them.
    _server_allowed[0] = item.get_closest_marker("server") is not None
    yield


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

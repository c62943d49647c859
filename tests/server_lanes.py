"""The server tests in two halves that run side by side (``make test``; ``--server-lane``).

One SGLang server start is about 23 s here, mostly imports, one core busy, and a server test
mostly waits on one server: run one after another, the server tests kept one of two cores
idle most of the time. So they run as two pytest processes at once:

- ``shared``: every module that uses one of ``SHARED_SERVERS`` (tests/sglang/conftest.py),
  ordered so that each of those servers' users run one after another; a server stops after
  its last user (tests/sglang/conftest.py), so this half holds at most two of them at a time
  (about 2.8 GB each);
- ``own``: every other server module: each starts its own servers, one module at a time;
  except ``SHARED_HALF_ALSO``, which the shared half runs after its own, once its servers have
  stopped, so that both halves take about as long.

A module stays whole in one half: its module-scoped servers start once.
"""

from __future__ import annotations

import pytest

# In the order the shared half uses them.
SHARED_SERVERS = ("stock_server", "mint_server", "shared_catalog_server", "small_budget_server")
LANES = ("shared", "own")
# Modules with servers of their own that the shared half runs last. Measured at ad4b665 (a fresh clone's
# make test, seconds of setup, call and teardown): the shared half 561 s, the own half 1,206 s, of which
# these 357 s. At 7bf182b the own half still ended some 50 s after the shared one: test_streaming_sessions.py (~22 s)
# moved too.
SHARED_HALF_ALSO = ("test_durable_later.py", "test_host_budget.py", "test_usage_on_stop.py", "test_pressure.py",
                    "test_upload_bounds.py", "test_streaming_sessions.py")
# config.stash: {nodeid: the shared servers to stop once that test is done} (last_users)
LAST_USERS = pytest.StashKey[dict]()


def _by_module(items) -> dict:
    modules: dict = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)
    return modules


def _shared_servers_used(module_items) -> list[str]:
    used = set().union(*(item.fixturenames for item in module_items))
    return [name for name in SHARED_SERVERS if name in used]


def select(items, lane: str) -> tuple[list, list]:
    """``(kept, deselected)``: the items of ``lane``'s modules, in the order that half runs them."""
    own, shared, shared_last = [], [], []
    for path, module_items in _by_module(items).items():
        servers = _shared_servers_used(module_items)
        if servers:
            shared.append((SHARED_SERVERS.index(servers[0]), module_items))
        elif path.name in SHARED_HALF_ALSO:
            shared_last += module_items
        else:
            own += module_items
    shared.sort(key=lambda pair: pair[0])  # stable: collection order among a server's users
    in_shared = [item for _, module_items in shared for item in module_items] + shared_last
    return (in_shared, own) if lane == "shared" else (own, in_shared)


def last_users(items) -> dict[str, list[str]]:
    """{nodeid: the SHARED_SERVERS no item after this one uses}: the last item of the last module that
    uses each (a module fixture built on a server may still call it as the module ends)."""
    last: dict[str, str] = {}
    for module_items in _by_module(items).values():
        for name in _shared_servers_used(module_items):
            last[name] = module_items[-1].nodeid
    out: dict[str, list[str]] = {}
    for name, nodeid in last.items():
        out.setdefault(nodeid, []).append(name)
    return out

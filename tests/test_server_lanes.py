"""The two halves of the server tests (tests/server_lanes.py): pure logic on stand-in test items."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server_lanes import SHARED_HALF_ALSO, last_users, select


@dataclass
class Item:
    path: Path
    name: str
    fixturenames: tuple[str, ...]

    @property
    def nodeid(self) -> str:
        return f"{self.path.name}::{self.name}"


def items_of(path: str, *tests: tuple[str, ...]) -> list[Item]:
    return [Item(Path(path), f"t{i}", fixtures) for i, fixtures in enumerate(tests)]


# In collection order: a catalog module, a stock-server module, a module with its own server, a
# module that uses the stock server in one test only, a mint-server module.
CATALOG = items_of("test_catalog.py", ("shared_catalog_server",), ("tmp_path",))
STOCK = items_of("test_stock.py", ("stock_server",))
OWN = items_of("test_own.py", ("tiny_model",), ("tiny_model",))
OWN_IN_SHARED_HALF = items_of(SHARED_HALF_ALSO[0], ("tiny_model",))
MIXED = items_of("test_mixed.py", ("tmp_path",), ("stock_server", "mint_server"), ("tmp_path",))
MINT = items_of("test_mint.py", ("mint_client", "mint_server"))
ALL = CATALOG + OWN_IN_SHARED_HALF + STOCK + OWN + MIXED + MINT


def test_the_shared_half_runs_each_servers_users_together_and_keeps_modules_whole():
    kept, deselected = select(ALL, "shared")
    # by the first shared server each module uses, then the modules with servers of their own it also runs
    assert kept == STOCK + MIXED + MINT + CATALOG + OWN_IN_SHARED_HALF
    assert deselected == OWN


def test_the_own_half_keeps_collection_order():
    kept, deselected = select(ALL, "own")
    assert kept == OWN
    assert sorted(i.nodeid for i in deselected) == sorted(
        i.nodeid for i in CATALOG + OWN_IN_SHARED_HALF + STOCK + MIXED + MINT)


def test_a_server_stops_after_the_last_test_of_the_last_module_that_uses_it():
    kept, _ = select(ALL, "shared")
    stops = last_users(kept)
    # MIXED's last test uses no server, yet the stock server stops only after it: a module fixture
    # built on the server may call it as the module ends.
    assert stops == {MIXED[-1].nodeid: ["stock_server"], MINT[-1].nodeid: ["mint_server"],
                     CATALOG[-1].nodeid: ["shared_catalog_server"]}
    # One process running every server test, in collection order, stops each as early.
    assert last_users(ALL) == stops
    assert ALL.index(CATALOG[-1]) < ALL.index(MIXED[-1])


def test_the_modules_the_shared_half_also_runs_exist():
    here = Path(__file__).parent / "sglang"
    assert [name for name in SHARED_HALF_ALSO if not (here / name).is_file()] == []

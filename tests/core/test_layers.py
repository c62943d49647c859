"""The package's layers import only downward, shipped code never reaches into dev/, files stay short.

Read from the source with ``ast`` (every import statement, also those inside
functions, ``try`` and ``TYPE_CHECKING`` blocks; relative imports resolved;
``importlib.import_module("sglang_mint.x")`` and a string naming a module,
such as a CLI command group, count as imports). A group is a top-level
module or package of ``sglang_mint`` (``kernels/`` installs as
``sglang_mint.kernels``). A group imports itself and the groups of lower
layers, never one of its own layer or above.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500

# Bottom to top. "" is the package itself (sglang_mint/__init__.py: the version).
LAYERS = [
    ("", "errors"),
    # Leaves: free ports, child processes, the Triton ops. The kernels know tensors and nothing
    # of adapters, catalogs or SGLang; only the glue (and tests, bench) call them.
    ("ports", "process", "kernels", "engine_manifest"),
    ("adapters",),  # what an adapter is: PEFT reading and checks, key rules, the base model
    ("packed",),  # the .mintpack file format; converts a checked PEFT adapter
    ("catalog",),  # ids, revisions, stores; publishes PEFT or packed adapters
    # Built on the catalog: MintConfig validates --mint-catalog by opening it and --mint-pin with
    # catalog ids; a CatalogLoraId carries the catalog's Revision record to the scheduler.
    ("config", "lora_id", "launch_flags"),  # launch_flags: the --mint-* flags as --help shows them
    ("residency", "usage", "grammar_cache", "stop_regex"),  # host LRU, cold loader, affinity: serving state;
    # the per-adapter usage ledger; the scheduler's compiled grammars within a budget; stop patterns in bounded time
    ("routing", "client", "capacity"),  # capacity: `mint plan`, over residency's LRU and affinity
    ("gateway",),  # SMG in front of engines: it asks them, as a client, for their usage
    ("frontend",),  # the HTTP side, engine-neutral: admin guard, catalog names, /mint/* handlers
    ("sglang",),  # the glue, the only importer of sglang
    ("cli",),  # `mint`: puts the command groups together
]
TIER = {group: tier for tier, groups in enumerate(LAYERS) for group in groups}
# dev/ (test servers, tiny models, the demo, `mint cluster`) is tooling: it may import anything,
# and shipped code (everything else under sglang_mint/, and kernels/) never imports it.
DEV = "dev"
# The one exception: `mint dev`, `mint demo` and `mint cluster` are commands of the one `mint`
# console script, so the top of the order, cli.py, names dev's command group among the others.
# It loads it by name and goes on without it when the module is absent (a build without dev/).
DEV_EXCEPTION = ("sglang_mint/cli.py", "sglang_mint.dev.cli")


def module_of(rel: str) -> tuple[str, bool]:
    """``"sglang_mint/catalog/ids.py"`` -> ``("sglang_mint.catalog.ids", False)``;
    ``"kernels/__init__.py"`` -> ``("sglang_mint.kernels", True)``."""
    parts = list(Path(rel).with_suffix("").parts)
    if parts[0] == "kernels":
        parts.insert(0, "sglang_mint")
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def shipped_sources() -> dict[str, str]:
    """{path relative to the checkout: source} of every shipped .py file, dev/ included."""
    files = sorted(ROOT.glob("sglang_mint/**/*.py")) + sorted(ROOT.glob("kernels/**/*.py"))
    return {str(p.relative_to(ROOT)): p.read_text() for p in files}


def group_of(module: str) -> str:
    """``"sglang_mint.catalog.ids"`` -> ``"catalog"``; ``"sglang_mint"`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(rel: str, source: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, sglang_mint module) for every import in one file, as described at the top."""
    module, is_package = module_of(rel)
    found = []
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from ..catalog import ids, inside sglang_mint.packed.convert
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:  # from sglang_mint import errors: the module sglang_mint.errors
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known else base))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            found.append((node.lineno, node.value))  # import_module("..."), a command group's name
    return [(line, name) for line, name in dict.fromkeys(found)  # once per line: from m import a, b
            if name == "sglang_mint" or name.startswith("sglang_mint.")]


def violations(sources: dict[str, str]) -> list[str]:
    """Every import in ``sources`` that goes up, sideways, into dev/ from shipped code, or
    from or to a group the layer table does not place."""
    known = {module_of(rel)[0] for rel in sources}
    found = []
    for rel, source in sources.items():
        own = group_of(module_of(rel)[0])
        for line, target in imports_of(rel, source, known):
            group = group_of(target)
            where = f"{rel}:{line}: {own or 'sglang_mint'} imports {target}"
            if own == DEV or group == own:
                continue
            if group == DEV:
                if (rel, target) != DEV_EXCEPTION:
                    found.append(f"{where}: shipped code never imports dev/")
            elif own not in TIER or group not in TIER:
                found.append(f"{where}: place {own if own not in TIER else group!r} in LAYERS")
            elif TIER[group] >= TIER[own]:
                found.append(f"{where}: {group!r} is not below {own!r} (LAYERS)")
    return found


def test_imports_go_only_down():
    assert violations(shipped_sources()) == []


def test_every_group_has_a_layer():
    """A new top-level module or package must be placed; a layer naming nothing is stale."""
    groups = {group_of(module_of(rel)[0]) for rel in shipped_sources()}
    assert groups - set(TIER) - {DEV} == set()
    assert set(TIER) - groups == set()


def test_shipped_code_never_names_dev_tooling():
    """Also a dev module named inside a longer string (``python -m sglang_mint.dev.x``)."""
    offenders = []
    for rel, source in shipped_sources().items():
        if group_of(module_of(rel)[0]) == DEV:
            continue
        for number, line in enumerate(source.splitlines(), 1):
            if ("sglang_mint.dev" in line or "sglang_mint/dev" in line) and not (
                    rel == DEV_EXCEPTION[0] and f'"{DEV_EXCEPTION[1]}"' in line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []


def test_the_checker_catches_what_it_should():
    # The tests above must be able to fail: each file below breaks one rule.
    sources = {
        "sglang_mint/packed/convert.py": "def f():\n    from sglang_mint.catalog.ids import revision_name\n",
        "sglang_mint/adapters/peft.py": "from ..catalog import errors\n",  # relative, resolved
        "sglang_mint/capacity/plan.py": "import sglang_mint.routing\n",  # a sibling of its layer
        "sglang_mint/residency/loader.py": "import importlib\nimportlib.import_module('sglang_mint.sglang.hooks')\n",
        "sglang_mint/catalog/cli.py": "GROUPS = ['sglang_mint.dev.cli']\n",  # only the top cli.py may
        "kernels/batch.py": "from sglang_mint import config\n",
        "sglang_mint/newroom.py": "from sglang_mint import errors\n",
        "sglang_mint/cli.py": "GROUPS = ['sglang_mint.dev.cli', 'sglang_mint.catalog.cli']\n",  # allowed
        "sglang_mint/dev/cli.py": "from sglang_mint.sglang import hooks\n",  # allowed: tooling
        "sglang_mint/sglang/hooks.py": "from sglang_mint.catalog import ids\nfrom . import flags\n",  # allowed
        "sglang_mint/sglang/flags.py": "", "sglang_mint/catalog/ids.py": "", "sglang_mint/routing.py": "",
        "sglang_mint/config.py": "", "sglang_mint/errors.py": "", "sglang_mint/catalog/errors.py": "",
    }
    found = violations(sources)
    assert [v.split(":")[0] for v in found] == [
        "sglang_mint/packed/convert.py", "sglang_mint/adapters/peft.py", "sglang_mint/capacity/plan.py",
        "sglang_mint/residency/loader.py", "sglang_mint/catalog/cli.py", "kernels/batch.py",
        "sglang_mint/newroom.py"], found
    assert "sglang_mint.catalog.errors" in found[1] and "never imports dev/" in found[4]
    assert "place 'newroom' in LAYERS" in found[6]


def test_no_file_over_500_lines():
    """Files stay small enough to read in one sitting (shared/STYLE.md)."""
    long = {}
    for folder in ("sglang_mint", "kernels", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(ROOT))] = lines
    assert long == {}, f"over {MAX_LINES} lines: {long}"

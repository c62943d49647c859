"""The engine-agnostic core never imports sglang (only sglang_mint.sglang may)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from hung import HUNG_AFTER_S


def test_core_imports_with_sglang_blocked():
    code = textwrap.dedent("""
        import importlib, pkgutil, sys

        class BlockSglang:
            def find_spec(self, name, path=None, target=None):
                if name == "sglang" or name.startswith("sglang."):
                    raise ImportError(f"blocked: the core imported {name}")
                return None

        sys.meta_path.insert(0, BlockSglang())
        import sglang_mint
        seen = []
        for mod in pkgutil.walk_packages(sglang_mint.__path__, "sglang_mint."):
            if mod.name == "sglang_mint.sglang" or mod.name.startswith("sglang_mint.sglang."):
                continue
            importlib.import_module(mod.name)
            seen.append(mod.name)
        import sglang_mint.kernels  # mapped from kernels/ by setup.py: walk it on its own
        for mod in pkgutil.walk_packages(sglang_mint.kernels.__path__, "sglang_mint.kernels."):
            importlib.import_module(mod.name)
            seen.append(mod.name)
        from sglang_mint.routing import adapter_from_model
        assert adapter_from_model("tiny:a1", "tiny") == "a1"
        assert "sglang" not in sys.modules
        print(len(seen), " ".join(seen))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, names = proc.stdout.split(" ", 1)
    assert int(count) >= 5
    for expected in ("sglang_mint.routing", "sglang_mint.config", "sglang_mint.cli", "sglang_mint.catalog.ids",
                     "sglang_mint.client", "sglang_mint.catalog.upload", "sglang_mint.kernels.routes",
                     "sglang_mint.kernels.sgmv_shrink", "sglang_mint.residency.rank_agreement",
                     "sglang_mint.residency.node_share", "sglang_mint.residency.scheduler_residency"):
        assert expected in names


def test_the_sglang_blocker_would_catch_a_leak():
    # The test above must be able to fail: importing the glue under the same block fails.
    code = textwrap.dedent("""
        import sys
        class BlockSglang:
            def find_spec(self, name, path=None, target=None):
                if name == "sglang" or name.startswith("sglang."):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, BlockSglang())
        import sglang_mint.sglang.frontend
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert proc.returncode != 0
    assert "blocked: sglang" in proc.stderr


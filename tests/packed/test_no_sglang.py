"""sglang_mint.packed is engine-agnostic: it imports and packs with sglang blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from hung import HUNG_AFTER_S


def test_packed_imports_and_runs_with_sglang_blocked(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        class BlockSglang:
            def find_spec(self, name, path=None, target=None):
                if name == "sglang" or name.startswith("sglang."):
                    raise ImportError(f"blocked: {{name}}")
        sys.meta_path.insert(0, BlockSglang())
        sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
        import sglang_mint.packed, sglang_mint.packed.convert, sglang_mint.packed.cli
        from packed_layouts import write_layout
        from pathlib import Path
        from sglang_mint.packed.convert import pack_folder
        from sglang_mint.packed import read_packed
        pack_folder(str(write_layout(Path({str(tmp_path)!r}) / "s", "per_expert")), {str(tmp_path / "p")!r})
        read_packed({str(tmp_path / "p" / "adapter.mintpack")!r}, pin=False)
        assert not any(m == "sglang" or m.startswith("sglang.") for m in sys.modules)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]

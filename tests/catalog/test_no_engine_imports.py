"""The catalog works with sglang and torch unimportable."""

import subprocess
import sys

from hung import HUNG_AFTER_S

CODE = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sglang", "torch", "triton"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import sglang_mint.catalog, sglang_mint.catalog.cli, sglang_mint.catalog.synth
from catalog_fixtures import write_base, write_peft
from sglang_mint.catalog import init_catalog
from sglang_mint.catalog.synth import synth
import tempfile, os
d = tempfile.mkdtemp()
cat = init_catalog(os.path.join(d, "cat"), write_base(os.path.join(d, "tiny")))
cat.publish("a", write_peft(os.path.join(d, "a")))
synth(cat, 10, progress=False)
assert cat.resolve("synth/0000009").local_path()
assert not [m for m in sys.modules if m.split(".")[0] in ("sglang", "torch")]
print("ok")
"""


def test_catalog_imports_without_sglang_or_torch():
    import os
    p = subprocess.run([sys.executable, "-c", CODE, os.path.dirname(os.path.abspath(__file__))],
                       capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_the_mint_command_starts_without_torch(tmp_path):
    """`mint catalog ...` answers in a fraction of a second: importing torch alone took 1.2 s of every call."""
    code = ("import sys; sys.argv = ['mint', 'catalog', 'show', sys.argv[1], 'x']\n"
            "from sglang_mint.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sglang', 'transformers'}))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-catalog")], capture_output=True, text=True,
                       timeout=HUNG_AFTER_S)
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout + p.stderr
    assert "no-catalog" in p.stderr  # it ran the command: the error names the folder

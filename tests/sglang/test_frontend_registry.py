"""The revision names the frontend registers in SGLang's LoRA registry leave it with their requests.

SGLang's own LoRARegistry and a real catalog, in a child process (SGLang's import is most of the
cost); the tokenizer manager is a stand-in holding the registry. SGLang drops a name only when a
request releases it, and a request refused after the frontend registered its names (for more
adapters than --max-loaded-loras, or a client that went away) never acquired them: the names
stayed registered for good, one per catalog revision such requests named, each listed in
/v1/models. The served path is tests/sglang/test_catalog_serving.py's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from hung import HUNG_AFTER_S


def test_names_of_a_request_refused_before_sglang_acquired_them_leave_the_registry(tiny_model, tiny_adapters,
                                                                                  tmp_path):
    from sglang_mint.catalog import init_catalog

    root = tmp_path / "catalog"
    with init_catalog(str(root), str(tiny_model)) as cat:
        for i, folder in enumerate(tiny_adapters.values()):
            cat.publish(f"acme/bot{i}", str(folder))
    code = textwrap.dedent(f"""
        import asyncio
        from types import SimpleNamespace
        from sglang.srt.lora.lora_registry import LoRARegistry
        from sglang_mint.catalog import open_catalog
        from sglang_mint.frontend.catalog_names import CatalogNames
        from sglang_mint.residency.metrics import FrontendMetrics
        from sglang_mint.sglang.frontend import CatalogFrontend, _around_tm_resolve_lora_path

        frontend = CatalogFrontend.__new__(CatalogFrontend)
        CatalogNames.__init__(frontend, open_catalog({str(root)!r}), FrontendMetrics(False))
        tm = SimpleNamespace(lora_registry=LoRARegistry(), lora_ref_cache={{}}, _mint_frontend=frontend)

        async def refused(tm, obj):
            raise ValueError("Received request with 2 unique loras requested but max loaded loras is 1")

        async def acquired(tm, obj):
            return await tm.lora_registry.acquire(obj.lora_path)

        def request(*ids):
            return SimpleNamespace(lora_path=list(ids), text=["x"] * len(ids), batch_size=len(ids), parallel_sample_num=1)

        async def main():
            try:
                await _around_tm_resolve_lora_path(refused, tm, request("acme/bot0", "acme/bot1"))
            except ValueError:
                pass
            print("after refusal", sorted(tm.lora_registry._registry))
            held = request("acme/bot2")
            await _around_tm_resolve_lora_path(acquired, tm, held)  # a request in flight keeps its name
            try:
                await _around_tm_resolve_lora_path(refused, tm, request("acme/bot2", "acme/bot0"))
            except ValueError:
                pass
            print("beside one in flight", sorted(tm.lora_registry._registry))

        asyncio.run(main())
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert lines == ["after refusal []", "beside one in flight ['acme/bot2@1']"], p.stdout
